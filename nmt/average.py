"""`nmt-average`: the mean of the parameters of several checkpoints of one run.

nmt-average --run RUN --last 5 -o RUN/checkpoint_averaged.pt
nmt-average RUN/checkpoint_9000.pt RUN/checkpoint_10000.pt -o averaged.pt

Bad input (--last below 1, a --run that is not a run directory, a checkpoint given twice,
an output path that cannot be written or that is one of the inputs) is one message and
exit status 2, before any checkpoint is read and with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nmt.checkpoint import average_checkpoints, numbered_checkpoints, save_checkpoint
from nmt.errors import UserError
from nmt.textio import check_output_file, write_error

DEFAULT_LAST = 5


def build_parser() -> argparse.ArgumentParser:
    """The `nmt-average` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nmt-average",
        description="Average the last N checkpoints of a run, or an explicit list.",
    )
    parser.add_argument("inputs", nargs="*", help="checkpoint files to average")
    parser.add_argument("--run", help="a run directory: average its numbered checkpoints")
    parser.add_argument(
        "--last",
        type=int,
        help=f"with --run: how many of the newest numbered checkpoints, >= 1 "
        f"(default {DEFAULT_LAST})",
    )
    parser.add_argument("-o", "--output", required=True, help="where to write the average")
    return parser


def run_checkpoints(run: str, last: int | None) -> tuple[list[Path], int]:
    """The newest `last` numbered checkpoints of run directory `run`, and how many it has."""
    last = DEFAULT_LAST if last is None else last
    if last < 1:  # a slice [-0:] or [1:] would silently take all, or all but the oldest
        raise UserError(
            f"--last {last}: give how many of the newest checkpoints to average, at least 1 "
            f"(e.g. --last {DEFAULT_LAST})"
        )
    directory = Path(run)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise UserError(
            f"--run {run} {what}; give the run directory nmt-train wrote its "
            f"checkpoint_<step>.pt files to, or list checkpoint files without --run"
        )
    found = numbered_checkpoints(directory)
    if not found:
        raise UserError(
            f"no checkpoint_<step>.pt files in {run}; give the run directory nmt-train wrote "
            f"them to (train.save_every), or list checkpoint files without --run"
        )
    return found[-last:], len(found)


def check_inputs(paths: list[Path], output: str) -> None:
    """Refuse a checkpoint given twice (it would count double) or an output among the inputs."""
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            also = f" (also as {seen[key]})" if str(seen[key]) != str(path) else ""
            raise UserError(
                f"{path} is given twice{also}; each checkpoint counts once in an average, so "
                f"list it once"
            )
        seen[key] = path
    if Path(output).resolve() in seen:
        raise UserError(
            f"-o {output} is one of the checkpoints being averaged; write the average to "
            f"another file (e.g. checkpoint_averaged.pt) so the input stays"
        )


def main(argv: list[str] | None = None) -> int:
    """`nmt-average`: average the last N checkpoints of a run, or an explicit list."""
    args = build_parser().parse_args(argv)
    try:
        paths = [Path(p) for p in args.inputs]
        available = None
        if args.run:
            newest, available = run_checkpoints(args.run, args.last)
            paths += newest
        elif args.last is not None:
            raise UserError("--last needs --run DIR: it picks the newest checkpoints of a run")
        if not paths:
            raise UserError("give checkpoint files to average, or --run DIR")
        check_inputs(paths, args.output)
        check_output_file(args.output, "-o", "checkpoint_averaged.pt")
        state = average_checkpoints(paths)
        try:
            save_checkpoint(args.output, state)
        except OSError as err:  # e.g. a full disk: the temporary file is already gone
            raise write_error("-o", args.output, err) from None
    except UserError as err:
        print(f"nmt-average: {err}", file=sys.stderr)
        return 2
    asked = DEFAULT_LAST if args.last is None else args.last
    short = f" (--last {asked}, but {args.run} has only {available})"
    note = short if available is not None and available < asked else ""
    print(f"averaged {len(paths)} checkpoints into {args.output}{note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
