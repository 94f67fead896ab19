"""Sweeps through Hydra's submitit launcher: the SLURM preset composes, local jobs share a cache."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nmt.config import register_configs
from nmt.results import PATH_KEYS, RUNTIME_KEYS, SWEEP_NAME_EXCLUDED_KEYS

TINY_TOY_RUN = [
    "data.toy.train_size=2000",
    "data.toy.valid_size=20",
    "data.toy.test_size=20",
    "train.max_steps=30",
    "train.eval_every=30",
    "train.warmup_steps=10",
    "train.threads=1",
    "train.tensorboard=false",
    "decode.max_len_b=10",
]


def _override(key: str, value: object) -> str:
    """A command-line override of `key` with a valid value of its type."""
    if key == "experiment":
        return "+experiment=clip_sweep"
    if isinstance(value, bool):
        value = str(value).lower()
    elif value is None:
        value = "null"
    elif isinstance(value, str):
        value = repr(value)  # quoted: a path such as ~/.cache/nmt is outside the bare grammar
    return f"{key}={value}"


def test_sweep_job_names_leave_out_exactly_the_runtime_and_path_keys() -> None:
    # A key that changes results must name the job (or two jobs share a directory and the
    # second is skipped as finished); a runtime key must not (or a relaunch retrains).
    assert set(SWEEP_NAME_EXCLUDED_KEYS) == {"experiment", *RUNTIME_KEYS, *PATH_KEYS}
    register_configs()
    with initialize_config_module(config_module="nmt.conf", version_base="1.3"):
        base = compose(config_name="config")
        defaults = {key: OmegaConf.select(base, key) for key in SWEEP_NAME_EXCLUDED_KEYS}
        defaults["train.threads"] = 3  # a value that is not the default, as a user would set
        overrides = [_override(key, value) for key, value in defaults.items()]
        # seed and encoding.k change results: they name the job, every other override does not
        cfg = compose(
            config_name="config",
            return_hydra_config=True,
            overrides=[*overrides, "seed=7", "encoding.k=4"],
        )
    assert cfg.hydra.job.override_dirname == "encoding.k=4,seed=7"
    excluded = cfg.hydra.job.config.override_dirname.exclude_keys
    assert list(excluded) == list(SWEEP_NAME_EXCLUDED_KEYS)


def test_slurm_preset_is_the_submitit_slurm_launcher_with_one_gpu_per_job() -> None:
    register_configs()
    with initialize_config_module(config_module="nmt.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "+experiment=clip_sweep",
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    # the experiment's sweep is untouched by the launcher choice
    assert cfg.hydra.sweeper.params["encoding.k"] == "0,1,2,4,16,64,256"


@pytest.mark.slow
def test_submitit_local_sweep_builds_the_data_cache_once_and_reports(tmp_path: Path) -> None:
    """Two jobs at once through submitit (the SLURM launcher's local twin), then nmt-report."""
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    subprocess.run(
        [
            "nmt-train",
            "+experiment=clip_sweep",
            "encoding.k=0,2",
            "seed=1",
            "hydra/launcher=submitit_local",
            *TINY_TOY_RUN,
            f"data.cache_dir={cache}",
            f"hydra.sweep.dir={sweep}",
        ],
        check=True,
        capture_output=True,
    )
    assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit
    job_dirs = sorted(p.parent for p in sweep.rglob("results.json"))
    assert len(job_dirs) == 2 and all(d.parent == sweep for d in job_dirs)  # no nesting by path
    logs = "".join((d / "train.log").read_text() for d in job_dirs)
    assert logs.count("cache miss, building") == 1, logs
    proc = subprocess.run(["nmt-report", str(sweep)], capture_output=True, text=True, check=True)
    assert "2 of 2 runs finished" in proc.stdout
    rows = [
        line
        for line in proc.stdout.split("Test BLEU by source length")[0].splitlines()
        if line.startswith("| ") and "BLEU" not in line
    ]
    assert [row.split("|")[2].strip() for row in rows] == ["0", "2"]  # after the data column
