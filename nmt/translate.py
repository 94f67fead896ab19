"""`nmt-translate`: a checkpoint and text in, one detokenised translation per line out.

    nmt-translate RUN/checkpoint_best.pt -i input.en -o output.de
    echo "A man rides a bike." | nmt-translate ckpt.pt --beam 4 --alpha 0.6

Beam size 1 decodes greedily. An empty input line gives an empty output line (N empty
lines with --nbest N) without being decoded. A line longer than the model can embed (only
learned absolute positions have a limit, `encoding.max_len`) is refused with a message
naming it, before anything is decoded or written; every other encoding translates lines
of any length in full. Bad input (a missing or closed input, an output path that cannot
be written) is one message and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from nmt.checkpoint import build_from_checkpoint
from nmt.config import decode_settings
from nmt.decoding import add_decode_arguments, decode_arguments, translate_ids
from nmt.errors import UserError
from nmt.runtime import resolve_device, tune_cpu_memory
from nmt.search import Hypothesis
from nmt.special_ids import EOS
from nmt.textio import check_output_file, one_line, read_lines, write_error, write_text_atomic


def format_output(vocab: Any, results: list[list[Hypothesis]], nbest: bool) -> list[str]:
    """One detokenised line per input, or `i ||| text ||| score` lines (i from 0) for n-best."""
    if not nbest:
        return [one_line(vocab.decode(hyps[0].tokens)) if hyps else "" for hyps in results]
    return [
        f"{i} ||| {one_line(vocab.decode(h.tokens))} ||| {h.score:.4f}"
        for i, hyps in enumerate(results)
        for h in hyps
    ]


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
        "--nbest",
        type=int,
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
    args = build_parser().parse_args(argv)
    try:
        if args.output:  # refused before the model is loaded and the text decoded
            check_output_file(args.output, "-o")
        elif sys.stdout is None:  # Python sets it to None when descriptor 1 is closed
            raise UserError("standard output is closed; write the translations with -o FILE")
        device = resolve_device(args.device)
        tune_cpu_memory(device)  # as training does: bounded kernel caches, kept blocks
        model, cfg, vocab = build_from_checkpoint(args.checkpoint, device)
        settings = decode_settings(
            cfg.get("decode"),
            **decode_arguments(args),
            nbest=1 if args.nbest is None else args.nbest,
        )
        lines = read_lines(args.input)
        src_ids = [[*vocab.encode(line), EOS] if line.strip() else [EOS] for line in lines]
        results = translate_ids(
            model,
            src_ids,
            settings,
            device=device,
            progress=args.input not in (None, "-") and not args.quiet,
            precision=args.precision,
            compile=args.compile,
        )
        out = format_output(vocab, results, nbest=args.nbest is not None)
        if args.output:
            try:
                write_text_atomic(args.output, out)
            except OSError as err:  # e.g. a full disk: the temporary file is already gone
                raise write_error("-o", args.output, err) from None
    except UserError as err:
        print(f"nmt-translate: {err}", file=sys.stderr)
        return 2
    if not args.output:
        try:
            sys.stdout.write("".join(line + "\n" for line in out))
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped early (`| head`): no traceback for that
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
