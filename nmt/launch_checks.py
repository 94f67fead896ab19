"""Every job a training command line describes, composed and validated before Hydra makes a
run directory: a bad value costs one line and no directory, not a traceback and a failed
run per sweep job."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import open_dict
from omegaconf.errors import OmegaConfBaseException

from nmt.config import compose
from nmt.config_checks import validate
from nmt.errors import ConfigError
from nmt.training_state import refuse_mixed_run

# Flags after which Hydra prints or edits something instead of running jobs.
INFORMATION_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--experimental-rerun",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--config-path",
    "-cp",
)
MULTIRUN_FLAGS = ("--multirun", "-m")
# A sweep larger than this is checked on its first jobs only: composing takes ~0.1 s a job.
MAX_CHECKED_JOBS = 256


def job_overrides(args: Sequence[str]) -> list[list[str]] | None:
    """The overrides of each job `nmt-train ARGS` runs; None when it runs none (--help,
    --cfg, ...). A sweep (`-m`, or an experiment that sets hydra.mode MULTIRUN) expands
    its command-line and `hydra.sweeper.params` choices into their product."""
    if any(arg.split("=", 1)[0] in INFORMATION_FLAGS for arg in args):
        return None
    multirun = any(arg in MULTIRUN_FLAGS for arg in args)
    given = [arg for arg in args if not arg.startswith("-")]
    parser = OverridesParser.create()
    plain = [o for o in parser.parse_overrides(given) if not o.is_sweep_override()]
    base = compose([o.input_line for o in plain], return_hydra_config=True)
    multirun = multirun or str(base.hydra.mode) == "RunMode.MULTIRUN"
    if not multirun:
        return [[o.input_line for o in plain]]
    swept = {o.get_key_element(): o for o in parser.parse_overrides(given)}
    for key, value in (base.hydra.sweeper.get("params") or {}).items():
        if key not in swept:
            swept[key] = parser.parse_overrides([f"{key}={value}"])[0]
    choices = [
        [f"{key}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for key, o in swept.items()
    ]
    jobs = itertools.islice(itertools.product(*choices), MAX_CHECKED_JOBS)
    return [list(job) for job in jobs]


def check_jobs(args: Sequence[str]) -> None:
    """Raise one `ConfigError` for the first job of `nmt-train ARGS` that cannot run."""
    try:
        jobs = job_overrides(args)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_gist(err)) from None
    for job in jobs or []:
        try:
            cfg = compose(job, return_hydra_config=len(jobs or []) == 1)
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(_gist(err)) from None
        if "hydra" in cfg:  # a single run: Hydra would write its .hydra/ into this directory
            refuse_mixed_run(Path(cfg.hydra.run.dir), cfg.train.resume)
            with open_dict(cfg):
                del cfg["hydra"]
        try:
            validate(cfg)
        except ConfigError as err:
            if len(jobs or []) > 1:
                raise ConfigError(f"{err} (in the sweep job {' '.join(job)})") from None
            raise


def _gist(err: Any) -> str:
    """Hydra's composition error in one line: its unindented lines (the indented ones are
    the config's internals)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and line[0] != " "]
    return " ".join(lines[:3]) if lines else type(err).__name__
