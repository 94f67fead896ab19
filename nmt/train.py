"""`nmt-train`: train, validate, checkpoint, resume, and report BLEU on the test set.

A Hydra app: `nmt-train model=small encoding=relative encoding.k=4 data=multi30k`.
`torchrun --nproc_per_node=N -m nmt.train ...` trains with DistributedDataParallel.
`train(cfg, run_dir)` is the same without Hydra (tests, notebooks); `nmt.trainer.Trainer`
is the training loop itself.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nmt.config import register_configs
from nmt.errors import ConfigError, UserError
from nmt.launch_checks import check_jobs
from nmt.results import finished_results
from nmt.trainer import Trainer
from nmt.training_state import refuse_mixed_run

log = logging.getLogger("nmt.train")


def train(cfg: Any, run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume) a run in `run_dir` and return its results.

    A run that already finished with the same settings is not touched: its results are
    returned as they are. A run that raises leaves `failed.json` (the error) so
    `nmt-report` lists it as failed.
    """
    run_dir = Path(run_dir)
    refuse_mixed_run(run_dir, cfg.train.resume)  # before failed.json could land in it
    try:
        done = finished_results(cfg, run_dir)
        if done is not None:
            log.info(
                "%s already finished with these settings (test BLEU %.2f): nothing to do. To "
                "train it again, use another run directory (hydra.run.dir=DIR) or remove this one",
                run_dir,
                done["test"]["bleu"],
            )
            return done
        results = Trainer(cfg, run_dir).run()
    except Exception as err:
        if run_dir.is_dir() and int(os.environ.get("RANK", "0")) == 0:
            failure = {
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
                "time": time.time(),
            }
            (run_dir / "failed.json").write_text(json.dumps(failure, indent=2))
        raise
    (run_dir / "failed.json").unlink(missing_ok=True)  # an earlier attempt failed, this one not
    return results


register_configs()


@hydra.main(version_base="1.3", config_path="pkg://nmt.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        results = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except UserError as err:  # input the user can fix: one line, not a traceback
        print(f"nmt-train: {err}", file=sys.stderr)
        sys.exit(2)
    # Returned for Hydra sweepers (e.g. Optuna): the validation BLEU.
    return float(results.get("valid", {}).get("bleu", float("nan"))) if results else float("nan")


def main() -> None:
    """`nmt-train`: every job is composed and validated first, so a bad value prints one
    line (exit status 2) before Hydra makes a run directory."""
    try:
        check_jobs(sys.argv[1:])
    except ConfigError as err:
        print(f"nmt-train: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
