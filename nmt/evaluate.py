"""`nmt-evaluate`: score checkpoints on a test set (sacreBLEU BLEU, chrF, BLEU by length).

    nmt-evaluate RUN/checkpoint_best.pt                       # the checkpoint's own test set
    nmt-evaluate RUN/checkpoint_*.pt --split valid           # several: averaged on the fly
    nmt-evaluate ckpt.pt data=multi30k data.tgt=fr --beam 4  # another data config

Test text is always encoded with the checkpoint's own vocabulary, whatever the data
config, so a model can be scored on any corpus its vocabulary covers. References are the
raw target sentences; hypotheses are detokenised, so BLEU is sacreBLEU's on plain text.
A data config whose language pair (data.src, data.tgt) differs from the checkpoint's is
scored, with a warning on stderr naming both pairs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nmt.checkpoint import average_checkpoints, build_from_checkpoint, load_checkpoint
from nmt.config import EVALUATION_ENCODING_OPTIONS, compose, decode_settings
from nmt.data import ROLES
from nmt.decoding import add_decode_arguments, decode_arguments
from nmt.errors import TranslateError, UserError
from nmt.evaluation import evaluate_split, format_summary, load_test_split
from nmt.metrics import DEFAULT_LENGTH_EDGES
from nmt.runtime import resolve_device, tune_cpu_memory
from nmt.textio import check_output_dir, one_line, write_error, write_text_atomic

# Overrides nmt-evaluate accepts besides data.*: evaluation-time options of the model.
MODEL_OVERRIDES = tuple(f"encoding.{key}" for key in EVALUATION_ENCODING_OPTIONS)
OVERRIDE_KEY = re.compile(r"[+~]*[A-Za-z_][\w.]*")  # data.root, encoding.rotary_factor, ...


def split_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional arguments -> (checkpoint paths, `key=value` overrides).

    An override's key is a dotted name (`data.root=...`); anything else, and any existing
    file, is a checkpoint: sweep job directories are named `3_encoding.k=16,seed=1/`, and
    their checkpoints must not be mistaken for overrides."""

    def is_override(arg: str) -> bool:
        key, eq, _ = arg.partition("=")
        return bool(eq) and OVERRIDE_KEY.fullmatch(key) is not None and not Path(arg).is_file()

    checkpoints = [a for a in inputs if not is_override(a)]
    overrides = [a for a in inputs if is_override(a)]
    return checkpoints, overrides


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The checkpoint's config with `data=NAME`, `data.KEY=VALUE` and model-side overrides."""
    allowed = ("data=", "data.", *(f"{k}=" for k in MODEL_OVERRIDES))
    bad = [o for o in overrides if not o.startswith(allowed)]
    if bad:
        raise TranslateError(
            f"cannot override {', '.join(bad)}: nmt-evaluate takes data=NAME, data.KEY=VALUE "
            f"and {', '.join(MODEL_OVERRIDES)}; decoding options are flags (--beam, --alpha)"
        )
    cfg = OmegaConf.create(config)
    group = [o for o in overrides if o.startswith("data=")]
    rest = [o for o in overrides if not o.startswith("data=")]
    try:
        if group:  # a named data config replaces the checkpoint's
            cfg.data = OmegaConf.create(OmegaConf.to_container(compose(group).data))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(rest))
    except (OmegaConfBaseException, HydraException) as err:
        raise TranslateError(f"bad override: {str(err).splitlines()[0]}") from None
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    """The `nmt-evaluate` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nmt-evaluate",
        description=(
            "Score checkpoints on a test set: sacreBLEU BLEU and chrF with signatures, BLEU by "
            "source length. Writes hyp.txt, ref.txt and eval.json, prints a summary."
        ),
        epilog=(
            "Positional arguments are checkpoint files (several are averaged on the fly) and "
            "overrides of the checkpoint's data config: data=NAME picks conf/data/NAME.yaml, "
            "data.KEY=VALUE changes one value "
            "(e.g. data.tgt=fr data.test_split=test_2016_flickr); "
            f"{' and '.join(MODEL_OVERRIDES)} set evaluation-time position scaling."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="CHECKPOINT|OVERRIDE")
    parser.add_argument("--split", default="test", choices=ROLES, help="default test")
    parser.add_argument(
        "--max-sentences", type=int, default=0, help="score only the first N (default: all)"
    )
    parser.add_argument(
        "--buckets",
        help="upper ends of the source-length buckets in subwords, e.g. "
        f"{','.join(map(str, DEFAULT_LENGTH_EDGES))} for 1-10, 11-20, 21-30, 31-50, 51+ "
        "(default: the checkpoint's decode.length_buckets)",
    )
    parser.add_argument(
        "-o",
        "--out-dir",
        help="where to write hyp.txt, ref.txt, eval.json (default: CHECKPOINT_DIR/eval_SPLIT)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_decode_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`nmt-evaluate`: checkpoint(s) + test set in; BLEU, chrF and files out."""
    # intermixed: overrides may come after flags (`ckpt --beam 4 data.tgt=fr`) as well
    args = build_parser().parse_intermixed_args(argv)
    checkpoints, overrides = split_inputs(args.inputs)
    try:
        if not checkpoints:
            raise TranslateError("give at least one checkpoint file")
        if args.max_sentences < 0:  # a slice would silently drop sentences from the end
            raise TranslateError(
                f"--max-sentences {args.max_sentences}: give a number >= 1, or 0 for all"
            )
        device = resolve_device(args.device)
        tune_cpu_memory(device)  # as training does: bounded kernel caches, kept blocks
        if len(checkpoints) > 1:
            state = average_checkpoints(checkpoints)
        else:
            state = load_checkpoint(checkpoints[0])
        trained = state["config"]
        state = dict(state, config=apply_overrides(trained, overrides))
        model, cfg, vocab = build_from_checkpoint(checkpoints[0], device, state=state)
        default_dir = Path(checkpoints[0]).resolve().parent / f"eval_{args.split}"
        out_dir = Path(args.out_dir or default_dir)
        # refused before decoding; a missing directory is made when the files are written
        label = "-o" if args.out_dir else "output directory"
        check_output_dir(out_dir, label)
        warning = language_pair_warning(checkpoints[0], trained, cfg.data)
        if warning:
            print(f"nmt-evaluate: warning: {warning}", file=sys.stderr)
        settings = decode_settings(
            cfg.get("decode"),
            **decode_arguments(args),
            nbest=1,
            length_buckets=parse_buckets(args.buckets) if args.buckets else None,
        )
        split = load_test_split(cfg.data, args.split, vocab)
        try:
            result = evaluate_split(
                model,
                vocab,
                split,
                settings,
                device=device,
                max_sentences=args.max_sentences,
                hyp_path=out_dir / "hyp.txt",
                progress=not args.quiet,
                precision=args.precision,
                compile=args.compile,
            )
            refs = [one_line(t) for t in split.tgt_text[: result["sentences"]]]
            write_text_atomic(out_dir / "ref.txt", refs)
            data = OmegaConf.to_container(cfg.data, resolve=True)
            result.update(
                checkpoints=[str(p) for p in checkpoints],
                averaged=len(checkpoints) > 1,
                data={k: v for k, v in data.items() if k != "toy"},
                hyp_file=str(out_dir / "hyp.txt"),
                ref_file=str(out_dir / "ref.txt"),
            )
            write_text_atomic(out_dir / "eval.json", [json.dumps(result, indent=2)])
        except OSError as err:  # only the three files are written here; e.g. a full disk
            raise write_error(label, out_dir, err) from None
    except UserError as err:
        print(f"nmt-evaluate: {err}", file=sys.stderr)
        return 2
    what = f"{len(checkpoints)} checkpoints averaged" if len(checkpoints) > 1 else checkpoints[0]
    print(f"checkpoint: {what}")
    print(f"data      : {cfg.data.name} {cfg.data.src}->{cfg.data.tgt}, split {split.name}")
    print(format_summary(result))
    print(f"\nwrote {out_dir / 'hyp.txt'}, {out_dir / 'ref.txt'}, {out_dir / 'eval.json'}")
    return 0


def language_pair_warning(checkpoint: str, trained: dict[str, Any], data: Any) -> str | None:
    """Why scoring `checkpoint` on `data` is probably a mistake, if its language pair differs.

    A warning, not an error: scoring a model on another pair (a pivot language, a corpus
    whose files are named differently) can be meant, but it is almost always a slip that
    gives a BLEU near 0 and nothing else to show for it.
    """
    section = OmegaConf.create(trained).get("data") or {}
    was = (section.get("src"), section.get("tgt"))
    now = (data.get("src"), data.get("tgt"))
    if was == now or None in was:  # a config without a pair cannot be compared
        return None
    return (
        f"{checkpoint} was trained on {was[0]}->{was[1]} but is evaluated on "
        f"{now[0]}->{now[1]} data (data.src={now[0]}, data.tgt={now[1]}): its output is scored "
        f"against {now[1]} references, so expect a BLEU near 0; to score it on its own pair, "
        f"pass data.src={was[0]} data.tgt={was[1]}"
    )


def parse_buckets(text: str) -> list[int]:
    """`"10,20,30,50"` -> [10, 20, 30, 50], checked."""
    try:
        edges = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TranslateError(
            f"--buckets {text!r}: give comma-separated integers, e.g. 10,20,30,50"
        ) from None
    if not edges or any(e < 1 for e in edges) or len(set(edges)) != len(edges):
        raise TranslateError(
            f"--buckets {text!r}: give distinct positive integers, e.g. 10,20,30,50"
        )
    return sorted(edges)


if __name__ == "__main__":
    sys.exit(main())
