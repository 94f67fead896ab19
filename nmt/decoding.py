"""Decoding: source id sequences in, n-best hypotheses out, in token-budget batches.

    settings = decode_settings(cfg.decode, beam=4)     # nmt.config: one checked object
    results = translate_ids(model, [[*vocab.encode(line), EOS] for line in lines], settings)
    text = vocab.decode(results[0][0].tokens)

Beam 1 decodes greedily. A source that is only EOS (an empty line) gets `nbest` empty
hypotheses without being decoded. A source longer than the model can embed (only learned
absolute positions have a limit, `encoding.max_len`) is refused with a TranslateError naming
it, before anything is decoded; every other encoding translates sources of any length.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nmt.config import DEVICES, PRECISIONS, DecodeConfig
from nmt.data.batching import token_budget_batches
from nmt.errors import TranslateError
from nmt.runtime import autocast
from nmt.search import (
    EOS_RULES,
    Hypothesis,
    beam_search,
    greedy_search,
    source_position_limit,
    target_position_limit,
)
from nmt.special_ids import EOS, PAD


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
    out = np.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=np.int64)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = seq
    return torch.from_numpy(out).to(device)


class CompiledDecodeStep:
    """A model whose `decode_step` runs through torch.compile with dynamic shapes once the
    cache holds two positions, the batch two rows and two sentences; every other attribute
    is the model's. torch.compile specialises sizes 0 and 1 (an empty cache, a one-position
    cache, a single row or sentence), so those steps stay eager and one graph serves all the
    others.
    Compiling costs about a minute and a half on a 2-core CPU: it pays on large test sets.
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self._compiled = torch.compile(model.decode_step, dynamic=True)

    def decode_step(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        if min(cache.length, tokens.size(0), cache.memory.size(0)) < 2:
            return self._model.decode_step(tokens, cache)
        # A copy: a view would make torch.compile guard on its base's shape (sentences left).
        return self._compiled(tokens.clone(), cache)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def translate_ids(
    model: Any,
    src_ids: Sequence[Sequence[int] | np.ndarray],
    settings: DecodeConfig | None = None,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    use_cache: bool = True,
    precision: str = "fp32",
    compile: bool = False,
) -> list[list[Hypothesis]]:
    """N-best lists for source id sequences (each ending with EOS), in input order.

    `settings` (default: DecodeConfig()) gives the search; sources are sorted by length into
    batches of at most `settings.max_tokens` padded source positions. `device` defaults to
    the model's. `use_cache=False` recomputes every prefix (the benchmark's baseline).
    `precision` bf16 / fp16 runs the model under autocast (faster on CPUs with AMX and on
    GPUs; the hypotheses can differ from fp32's); the search itself stays in float32.
    `compile` runs the decoder step through torch.compile (`CompiledDecodeStep`).
    """
    if precision not in DECODE_PRECISIONS:
        raise ValueError(f"precision={precision!r}; choose one of {', '.join(DECODE_PRECISIONS)}")
    from tqdm import tqdm

    settings = DecodeConfig() if settings is None else settings
    device = model_device(model) if device is None else torch.device(device)
    check_lengths(model, src_ids)
    results: list[list[Hypothesis]] = [[] for _ in src_ids]
    empty = [len(ids) <= 1 and all(t == EOS for t in ids) for ids in src_ids]
    todo = [i for i, is_empty in enumerate(empty) if not is_empty]
    for i in set(range(len(src_ids))) - set(todo):  # as many as a decoded source: n-best
        results[i] = [Hypothesis([], 0.0, 0.0) for _ in range(settings.nbest)]
    lengths = [len(src_ids[i]) for i in todo]
    batches = token_budget_batches(
        lengths, None, settings.max_tokens, seed=0, epoch=0, shuffle=False
    )
    if isinstance(model, torch.nn.Module):
        model.eval()
    if compile:
        model = CompiledDecodeStep(model)
    search = greedy_search if settings.beam == 1 else beam_search
    bar = tqdm(total=len(todo), unit="sent", disable=not progress, file=sys.stderr, leave=False)
    for batch in batches:
        rows = [todo[j] for j in batch]
        src = pad_batch([src_ids[i] for i in rows], device)
        with autocast(device, precision):
            out = search(model, src, settings, use_cache=use_cache)
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
            f"or use an encoding without a length limit",
            stacklevel=2,
        )
    return results


# ---------------------------------------------------------------------------------------
# the decoding flags nmt-translate and nmt-evaluate share

# Decoding has no `auto`: fp32 unless asked, so a checkpoint decodes the same everywhere.
DECODE_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")
FLAG_SETTINGS = (
    "beam",
    "alpha",
    "max_len_a",
    "max_len_b",
    "max_tokens",
    "unk_penalty",
    "eos_rule",
)


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """--beam, --alpha, --max-len-a/-b, --max-tokens, --unk-penalty, --eos-rule, --device
    (defaults: the checkpoint's)."""
    d = DecodeConfig()
    g = parser.add_argument_group("decoding (defaults: the checkpoint's decode settings)")
    g.add_argument("--beam", type=int, help=f"beam size, 1 = greedy (default {d.beam})")
    g.add_argument(
        "--alpha",
        type=float,
        help=f"GNMT length penalty ((5+|Y|)/6)^alpha, 0 = none (default {d.alpha})",
    )
    g.add_argument(
        "--max-len-a", type=float, help=f"max output length a*src_len+b: a (default {d.max_len_a})"
    )
    g.add_argument("--max-len-b", type=int, help=f"... and b (default {d.max_len_b})")
    g.add_argument(
        "--max-tokens", type=int, help=f"source tokens per batch (default {d.max_tokens})"
    )
    g.add_argument(
        "--unk-penalty",
        type=float,
        help="added to UNK's log-probability at every step, <= 0; --unk-penalty=-inf bans "
        f"UNK (default {d.unk_penalty})",
    )
    g.add_argument(
        "--eos-rule",
        choices=EOS_RULES,
        help="an EOS ends a hypothesis among the top beam (top_beam, fairseq) or top 2 x beam "
        f"(top_2beam, tensor2tensor) candidates (default {d.eos_rule})",
    )
    g.add_argument("--device", default="auto", choices=DEVICES, help="default auto")
    g.add_argument(
        "--precision",
        default="fp32",
        choices=DECODE_PRECISIONS,
        help="bf16 / fp16: the model under autocast, faster on CPUs with AMX and on GPUs; "
        "a few hypotheses can differ from fp32's (default fp32)",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="run the decoder step through torch.compile: the same hypotheses, faster once "
        "compiled (about 1.5 minutes on a 2-core CPU): for large test sets",
    )


def decode_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The decode settings given as flags (None where not given), for `decode_settings`."""
    return {name: getattr(args, name) for name in FLAG_SETTINGS}
