"""Translate id sequences in token-budget batches, and the `nmt-translate` command line.

    nmt-translate RUN/checkpoint_best.pt -i input.en -o output.de
    echo "A man rides a bike." | nmt-translate ckpt.pt --beam 4 --alpha 0.6

Beam size 1 decodes greedily. An empty input line gives an empty output line without
being decoded. A line longer than the model can embed (only learned absolute positions
have a limit, `encoding.max_len`) is refused with a message naming it, before anything
is decoded or written; every other encoding translates lines of any length in full.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt.checkpoint import new_file_mode
from nmt.config import DEVICES, ConfigError, DecodeConfig
from nmt.data.corpora import read_bytes
from nmt.device import resolve_device
from nmt.search import (
    EOS_ID,
    PAD_ID,
    Hypothesis,
    beam_search,
    greedy_search,
    source_position_limit,
    target_position_limit,
)


class TranslateError(ValueError):
    """Input the model cannot translate; the message names the line and what to do."""


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters (CPU for a parameter-less stand-in)."""
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return torch.device("cpu") if param is None else param.device


def check_lengths(model: Any, src_ids: Sequence[Sequence[int]], first_line: int = 1) -> None:
    """Refuse sources longer than a learned position table, naming the first such line."""
    limit = source_position_limit(model)
    if limit is None:
        return
    for i, ids in enumerate(src_ids):
        if len(ids) > limit:
            raise TranslateError(
                f"line {i + first_line} has {len(ids)} subwords (with EOS) but this model has "
                f"learned positions for only {limit} (encoding=learned, encoding.max_len="
                f"{limit}); split the line, or use a model with another encoding"
            )


def pad_batch(seqs: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """Right-padded `(B, S)` long tensor."""
    out = np.full((len(seqs), max(len(s) for s in seqs)), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = seq
    return torch.from_numpy(out).to(device)


def translate_ids(
    model: Any,
    src_ids: Sequence[Sequence[int] | np.ndarray],
    *,
    beam: int = DecodeConfig.beam,
    alpha: float = DecodeConfig.alpha,
    max_len_a: float = DecodeConfig.max_len_a,
    max_len_b: int = DecodeConfig.max_len_b,
    max_tokens: int = DecodeConfig.max_tokens,
    nbest: int = DecodeConfig.nbest,
    device: torch.device | str | None = None,
    progress: bool = False,
    use_cache: bool = True,
) -> list[list[Hypothesis]]:
    """N-best lists for source id sequences (each ending with EOS), in input order.

    Sources are sorted by length into batches of at most `max_tokens` padded source
    positions; beam 1 is greedy. A source that is only EOS (an empty line) gets one empty
    hypothesis of score 0 without decoding. `use_cache=False` recomputes every prefix
    (the benchmark's baseline).
    """
    from tqdm import tqdm

    from nmt.data.batching import token_budget_batches

    device = model_device(model) if device is None else torch.device(device)
    check_lengths(model, src_ids)
    results: list[list[Hypothesis]] = [[] for _ in src_ids]
    todo = [i for i, ids in enumerate(src_ids) if not (len(ids) <= 1 and all(t == EOS_ID for t in ids))]
    for i in set(range(len(src_ids))) - set(todo):
        results[i] = [Hypothesis([], 0.0, 0.0)]
    lengths = [len(src_ids[i]) for i in todo]
    batches = token_budget_batches(lengths, None, max_tokens, seed=0, epoch=0, shuffle=False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    bar = tqdm(total=len(todo), unit="sent", disable=not progress, file=sys.stderr, leave=False)
    for batch in batches:
        rows = [todo[j] for j in batch]
        src = pad_batch([src_ids[i] for i in rows], device)
        if beam == 1:
            out = greedy_search(
                model, src, alpha=alpha, max_len_a=max_len_a, max_len_b=max_len_b,
                use_cache=use_cache,
            )
        else:
            out = beam_search(
                model, src, beam=beam, alpha=alpha, max_len_a=max_len_a, max_len_b=max_len_b,
                nbest=nbest, use_cache=use_cache,
            )
        for i, hyps in zip(rows, out, strict=True):
            results[i] = hyps
        bar.update(len(rows))
    bar.close()
    limit = target_position_limit(model)
    cut = sum(1 for hyps in results if limit and hyps and len(hyps[0].tokens) + 1 >= limit)
    if cut:
        warnings.warn(
            f"{cut} of {len(results)} translations reached the end of the learned position table "
            f"(encoding.max_len={limit}) and were cut there; train with a larger encoding.max_len "
            f"or use an encoding without a length limit", stacklevel=2,
        )
    return results


def read_lines(path: str | None) -> list[str]:
    """Lines of a UTF-8 file, gzipped when its name ends in .gz (or stdin for None / "-"),
    without their line ends."""
    stdin = path in (None, "-")
    where = "standard input" if stdin else str(path)
    try:
        data = sys.stdin.buffer.read() if stdin else read_bytes(Path(path))  # type: ignore[arg-type]
    except (FileNotFoundError, IsADirectoryError):
        raise TranslateError(f"input file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as err:
        problem = "is not a complete gzip file" if where.endswith(".gz") else "cannot be read"
        raise TranslateError(f"{where} {problem} ({err})") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TranslateError(
            f"{where} is not UTF-8 (line {line}: {err.reason}); convert it first, e.g. with iconv"
        ) from None
    # Only "\n" ends a line (str.splitlines would also split at U+2028, U+0085, ..., which
    # occur inside real sentences and would shift every later output line).
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def one_line(text: str) -> str:
    """Text with line breaks made spaces, so one output stays one line of a file."""
    return " ".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def write_text_atomic(path: str | Path, lines: Iterable[str]) -> None:
    """Write lines to `path` via a temporary file and a rename: no half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_output(vocab: Any, results: list[list[Hypothesis]], nbest: bool) -> list[str]:
    """One detokenised line per input, or `i ||| text ||| score` lines (i from 0) for n-best."""
    if not nbest:
        return [one_line(vocab.decode(hyps[0].tokens)) if hyps else "" for hyps in results]
    return [
        f"{i} ||| {one_line(vocab.decode(h.tokens))} ||| {h.score:.4f}"
        for i, hyps in enumerate(results)
        for h in hyps
    ]


def decode_defaults(cfg: Any) -> DecodeConfig:
    """The checkpoint's `decode` settings, or DecodeConfig's defaults for what it lacks."""
    section = cfg.get("decode") or {}
    base = DecodeConfig()
    return DecodeConfig(**{k: section.get(k, getattr(base, k)) for k in vars(base)})


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """--beam, --alpha, --max-len-a/-b, --max-tokens, --device (defaults: the checkpoint's)."""
    d = DecodeConfig()
    g = parser.add_argument_group("decoding (defaults: the checkpoint's decode settings)")
    g.add_argument("--beam", type=int, help=f"beam size, 1 = greedy (default {d.beam})")
    g.add_argument(
        "--alpha", type=float,
        help=f"GNMT length penalty ((5+|Y|)/6)^alpha, 0 = none (default {d.alpha})",
    )
    g.add_argument(
        "--max-len-a", type=float, help=f"max output length a*src_len+b: a (default {d.max_len_a})"
    )
    g.add_argument("--max-len-b", type=int, help=f"... and b (default {d.max_len_b})")
    g.add_argument(
        "--max-tokens", type=int, help=f"source tokens per batch (default {d.max_tokens})"
    )
    g.add_argument("--device", default="auto", choices=DEVICES, help="default auto")


def decode_settings(args: argparse.Namespace, cfg: Any) -> DecodeConfig:
    """Command-line values over the checkpoint's decode settings; checked."""
    d = decode_defaults(cfg)
    for name in ("beam", "alpha", "max_len_a", "max_len_b", "max_tokens", "nbest"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(d, name, value)
    if d.beam < 1:
        raise TranslateError(f"--beam {d.beam}: the beam size must be >= 1 (1 is greedy)")
    if d.alpha < 0 or not math.isfinite(d.alpha):
        raise TranslateError(f"--alpha {d.alpha}: must be >= 0 (0: no length penalty)")
    if d.max_tokens < 1:
        raise TranslateError(f"--max-tokens {d.max_tokens}: must be >= 1")
    return d


def build_parser() -> argparse.ArgumentParser:
    """The `nmt-translate` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nmt-translate",
        description="Translate text with an nmt checkpoint: one detokenised line per input line.",
        epilog=(
            "An empty line gives an empty line. A line longer than a model with learned "
            "absolute positions can embed (encoding.max_len subwords) is an error naming "
            "the line; nothing is written. Other encodings translate lines of any length."
        ),
    )
    parser.add_argument("checkpoint", help="a .pt file written by nmt-train or nmt-average")
    parser.add_argument("-i", "--input", help="input file (default: standard input)")
    parser.add_argument(
        "-o", "--output", help="output file, written atomically (default: standard output)"
    )
    parser.add_argument(
        "--nbest", type=int,
        help="write the N best per line as 'i ||| translation ||| score' lines, i = input "
        "line number from 0, score = log-prob / length penalty (needs N <= beam)",
    )
    add_decode_arguments(parser)
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (shown on stderr for -i FILE)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`nmt-translate`: checkpoint + text in, translations out."""
    from nmt.checkpoint import CheckpointError, build_from_checkpoint
    from nmt.data.errors import DataError

    args = build_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        model, cfg, vocab = build_from_checkpoint(args.checkpoint, device)
        settings = decode_settings(args, cfg)
        if args.nbest is not None and not 1 <= args.nbest <= settings.beam:
            raise TranslateError(f"--nbest {args.nbest} must be between 1 and the beam ({settings.beam})")
        lines = read_lines(args.input)
        src_ids = [[*vocab.encode(line), EOS_ID] if line.strip() else [EOS_ID] for line in lines]
        results = translate_ids(
            model, src_ids, beam=settings.beam, alpha=settings.alpha,
            max_len_a=settings.max_len_a, max_len_b=settings.max_len_b,
            max_tokens=settings.max_tokens, nbest=args.nbest or 1, device=device,
            progress=args.input not in (None, "-") and not args.quiet,
        )
    except (CheckpointError, TranslateError, DataError, ConfigError) as err:
        print(f"nmt-translate: {err}", file=sys.stderr)
        return 2
    out = format_output(vocab, results, nbest=args.nbest is not None)
    if args.output:
        write_text_atomic(args.output, out)
    else:
        sys.stdout.write("".join(line + "\n" for line in out))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
