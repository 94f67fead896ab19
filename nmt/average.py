"""`nmt-average`: the mean of the parameters of several checkpoints of one run.

nmt-average --run RUN --last 5 -o RUN/checkpoint_averaged.pt
nmt-average RUN/checkpoint_9000.pt RUN/checkpoint_10000.pt -o averaged.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nmt.checkpoint import average_checkpoints, numbered_checkpoints, save_checkpoint
from nmt.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """`nmt-average`: average the last N checkpoints of a run, or an explicit list."""
    parser = argparse.ArgumentParser(prog="nmt-average", description=main.__doc__)
    parser.add_argument("inputs", nargs="*", help="checkpoint files to average")
    parser.add_argument("--run", help="a run directory: average its numbered checkpoints")
    parser.add_argument("--last", type=int, default=5, help="with --run: how many (default 5)")
    parser.add_argument("-o", "--output", required=True, help="where to write the average")
    args = parser.parse_args(argv)
    paths: list[Path] = [Path(p) for p in args.inputs]
    if args.run:
        found = numbered_checkpoints(args.run)
        if not found:
            parser.error(f"no checkpoint_<step>.pt files in {args.run}")
        paths += found[-args.last :]
    if not paths:
        parser.error("give checkpoint files, or --run DIR")
    try:
        save_checkpoint(args.output, average_checkpoints(paths))
    except UserError as err:
        print(f"nmt-average: {err}", file=sys.stderr)
        return 2
    print(f"averaged {len(paths)} checkpoints into {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
