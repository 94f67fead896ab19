"""Training: exact resume, distributed == single process, crash-safe checkpoints, clear errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nmt.train as train_module
import nmt.trainer as trainer_module
from nmt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nmt.config import compose
from nmt.errors import ConfigError, TrainingError
from nmt.objective import inverse_sqrt_lr
from nmt.results import finished_results
from nmt.train import train

# A small, quick run: tiny model on a reduced toy task, no decoding of long outputs.
QUICK = [
    "model=tiny",
    "encoding=relative",
    "data.toy.train_size=600",
    "data.toy.valid_size=8",
    "data.toy.test_size=8",
    "train.max_tokens=600",
    "train.log_every=1",
    "train.eval_every=1000",
    "train.save_every=1000",
    "train.warmup_steps=10",
    "train.tensorboard=false",
    "train.threads=1",
    "decode.max_len_b=5",
    "decode.max_len_a=0.5",
]


@pytest.fixture
def quick_cfg(tmp_path):
    def make(*overrides: str):
        return compose([*QUICK, f"data.cache_dir={tmp_path / 'cache'}", *overrides])

    return make


def train_losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


def test_resume_continues_the_same_run(quick_cfg, tmp_path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(quick_cfg("train.max_steps=8", "train.save_every=4"), straight)
    train(quick_cfg("train.max_steps=4", "train.save_every=4"), resumed)
    first = train_losses(resumed)
    results = train(quick_cfg("train.max_steps=8", "train.save_every=4"), resumed)
    assert results["resumed_from"].endswith("checkpoint_last.pt")
    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(first) == [1, 2, 3, 4]
    for step in range(5, 9):  # same data order, dropout draws and optimizer state
        assert a[step] == pytest.approx(b[step], abs=1e-6), step
    assert a[8] != pytest.approx(a[7])  # the loss moves, so equality above is not vacuous


def test_results_file_has_what_a_report_needs(quick_cfg, tmp_path) -> None:
    results = train(quick_cfg("train.max_steps=2"), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["steps"] == 2 and on_disk["encoding"] == "relative" and on_disk["k"] == 16
    assert on_disk["data"] == "toy" and on_disk["language_pair"] == "src-tgt"
    for split in ("valid", "test"):
        signature = on_disk[split]["bleu_signature"]
        assert "nrefs:1" in signature or "BLEU" in signature
        assert 0.0 <= on_disk[split]["bleu"] <= 100.0
        assert (tmp_path / "run" / f"{split}.hyp.txt").exists()
    assert on_disk["parameters"] == results["parameters"] > 0
    assert on_disk["train_tokens_per_s"] > 0
    assert on_disk["wall_seconds"] >= on_disk["train_seconds"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    logged = [r["peak_rss_mib"] for r in rows if r["split"] == "train"]
    if sys.platform.startswith("linux"):  # the process holds at least torch itself
        assert 100 < logged[-1] <= on_disk["peak_rss_mib"] < 64 * 1024
    hypotheses = tmp_path / "run" / on_disk["hypotheses"]["test"]
    assert hypotheses.read_text(encoding="utf-8").count("\n") == 8


def test_relaunching_a_finished_run_does_no_work_unless_a_setting_changed(
    quick_cfg, tmp_path, monkeypatch
) -> None:
    run = tmp_path / "run"
    first = train(quick_cfg("train.max_steps=2"), run)
    real_trainer, built = train_module.Trainer, []

    def counting_trainer(*args, **kwargs):
        built.append(args)
        return real_trainer(*args, **kwargs)

    monkeypatch.setattr(train_module, "Trainer", counting_trainer)
    stamp = (run / "results.json").stat().st_mtime_ns, (run / "test.hyp.txt").stat().st_mtime_ns
    # Where and how it runs is not a setting: the finished results come back untouched.
    again = train(
        quick_cfg("train.max_steps=2", "train.log_every=5", f"data.cache_dir={tmp_path / 'c2'}"),
        run,
    )
    assert again == first and not built
    assert stamp == (
        (run / "results.json").stat().st_mtime_ns,
        (run / "test.hyp.txt").stat().st_mtime_ns,
    )
    # Another beam re-decodes from the last checkpoint; a larger budget trains on.
    redecoded = train(quick_cfg("train.max_steps=2", "decode.beam=2"), run)
    assert len(built) == 1 and redecoded["decode"]["beam"] == 2 and redecoded["steps"] == 2
    longer = train(quick_cfg("train.max_steps=3", "decode.beam=2"), run)
    assert len(built) == 2 and longer["steps"] == 3
    # A restart that is cut short sets the old results aside: the next launch trains.
    monkeypatch.setattr(
        real_trainer, "run", lambda self: (_ for _ in ()).throw(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        train(quick_cfg("train.max_steps=3", "decode.beam=3"), run)
    assert not (run / "results.json").exists() and (run / "results.previous.json").exists()
    assert finished_results(quick_cfg("train.max_steps=3", "decode.beam=2"), run) is None
    # The corpus paths are in the settings as digests, never as paths.
    settings = json.loads((run / "results.previous.json").read_text())["settings"]
    assert "data.cache_dir" not in settings and str(settings["data.root"]).startswith("sha256:")
    assert str(tmp_path) not in json.dumps(settings)


def test_an_epoch_budget_trains_every_batch_once_and_saves_the_end(quick_cfg, tmp_path) -> None:
    """max_steps=0 is no step budget; the epoch ending between log and save steps still
    gets its final log line, validation and checkpoint."""
    cfg = quick_cfg("train.max_steps=0", "train.max_epochs=1", "train.log_every=1000")
    results = train(cfg, tmp_path / "run")
    from nmt.data import prepare_data
    from nmt.data.batching import split_batches

    batches = split_batches(
        prepare_data(cfg.data).splits["train"], cfg.train.max_tokens, seed=cfg.seed, epoch=0
    )
    assert results["steps"] == len(batches) > 1 and results["epochs"] == pytest.approx(1.0)
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["step"] == len(batches)
    assert list(train_losses(tmp_path / "run")) == [len(batches)]
    # the last step is a save step but not an eval step: it is still validated
    results = train(
        quick_cfg("train.max_steps=0", "train.max_epochs=1", "train.save_every=1"), tmp_path / "r2"
    )
    records = [json.loads(x) for x in (tmp_path / "r2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "valid"] == [len(batches)]


@pytest.mark.parametrize(
    "save_every,left",
    [(1, "checkpoint_last.pt holds step 2."), (1000, "no checkpoint was saved yet in ")],
    ids=["saved", "none-saved"],
)
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    quick_cfg, tmp_path, monkeypatch, save_every, left
) -> None:
    calls = {"n": 0}
    real = trainer_module.batch_loss

    def poisoned(*args):
        calls["n"] += 1
        loss, nll = real(*args)
        return (loss * float("nan"), nll) if calls["n"] >= 3 else (loss, nll)

    monkeypatch.setattr(trainer_module, "batch_loss", poisoned)
    run = tmp_path / "run"
    cfg = quick_cfg("train.max_steps=10", f"train.save_every={save_every}")
    lr3 = inverse_sqrt_lr(3, cfg.model.d_model, cfg.train.warmup_steps, cfg.train.lr_scale)
    with pytest.raises(TrainingError, match=rf"at step 3 \(learning rate {lr3:.3g}\)") as err:
        train(cfg, run)
    assert f"; {left}" in str(err.value).replace(f"{run}/", "")
    if save_every > 1:
        assert not list(run.glob("checkpoint*.pt"))
        return
    state = load_checkpoint(run / "checkpoint_last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_unwritable_run_directory_fails_before_work(quick_cfg, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(TrainingError, match="cannot write to the run directory"):
        train(quick_cfg("train.max_steps=1"), blocker / "run")


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.save_every=0", "train.save_every=0 must be >= 1"),
        ("seed=-1", "seed=-1 must be between 0 and 4294967295"),
        ("seed=4294967296", "seed=4294967296 must be between 0 and 4294967295"),
    ],
)
def test_bad_training_values_are_refused_before_work(
    quick_cfg, tmp_path, override, message
) -> None:
    with pytest.raises(ConfigError) as err:
        train(quick_cfg("train.max_steps=2", override), tmp_path / "run")
    assert str(err.value) == message
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("left", ["checkpoint_3.pt", "metrics.jsonl", "results.json"])
def test_resume_false_refuses_a_directory_holding_another_run(
    quick_cfg, tmp_path, monkeypatch, left
) -> None:
    """Training there would mix two runs (old checkpoints outrank the new ones in pruning,
    checkpoint_best.pt and metrics.jsonl stay the old run's): refused before any work."""
    monkeypatch.setattr(trainer_module, "prepare_data", lambda *a: pytest.fail("prepared"))
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / left).write_text("{}")
    with pytest.raises(ConfigError) as err:
        train(quick_cfg("train.max_steps=2", "train.resume=false"), run)
    assert str(err.value) == (
        f"train.resume=false, but the run directory {run} holds another run ({left}); choose "
        f"a new directory with hydra.run.dir=DIR, or remove {run} to train there from "
        f"scratch, or continue that run with train.resume=true"
    )
    assert (run / left).read_text() == "{}"  # nothing of the old run touched, nothing added
    assert {p.name for p in run.iterdir()} - {"failed.json"} == {".hydra", left}


def test_resume_false_trains_in_a_directory_of_no_run(quick_cfg, tmp_path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)  # what Hydra makes before the run starts
    (run / "failed.json").write_text("{}")  # an attempt that failed before training
    assert train(quick_cfg("train.max_steps=1", "train.resume=false"), run)["steps"] == 1


def test_a_failing_validation_keeps_the_trained_weights(quick_cfg, tmp_path, monkeypatch):
    """Saved first, validated after: an error in validation or decoding loses no training."""

    def broken(*args, **kwargs):
        raise RuntimeError("validation failed")

    monkeypatch.setattr(trainer_module, "validation_record", broken)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="validation failed"):
        train(quick_cfg("train.max_steps=3"), run)
    assert load_checkpoint(run / "checkpoint_last.pt")["step"] == 3


def test_checkpoint_best_follows_the_validation_bleu(quick_cfg, tmp_path, monkeypatch):
    bleus = iter([10.0, 30.0, 5.0, 20.0])

    def fake(model, data, cfg, settings, runtime, step):
        return {"split": "valid", "step": step, "bleu": next(bleus)}

    monkeypatch.setattr(trainer_module, "validation_record", fake)
    run = tmp_path / "run"
    every = ["train.eval_every=2", "train.save_every=2", "train.keep_last=5"]
    train(quick_cfg("train.max_steps=6", *every), run)
    best = load_checkpoint(run / "checkpoint_best.pt")
    assert best["step"] == 4 and best["progress"]["best_bleu"] == 30.0
    # every checkpoint from step 4 on knows the best BLEU, so a resumed run compares with it
    for name in ("checkpoint_4.pt", "checkpoint_6.pt"):
        assert load_checkpoint(run / name)["progress"]["best_bleu"] == 30.0
    assert load_checkpoint(run / "checkpoint_2.pt")["progress"]["best_bleu"] == 10.0
    train(quick_cfg("train.max_steps=8", *every), run)  # 20 < 30: the best stays step 4
    assert load_checkpoint(run / "checkpoint_best.pt")["step"] == 4


def test_resume_drops_the_rows_a_killed_launch_logged_past_the_checkpoint(
    quick_cfg, tmp_path, monkeypatch
) -> None:
    run = tmp_path / "run"
    real_log = trainer_module.Trainer._log_train

    def killed_at_step_6(self):
        if self.progress.step == 6:  # killed while writing step 6's row
            with open(run / "metrics.jsonl", "a") as f:
                f.write('{"split": "train", "st')
            raise KeyboardInterrupt
        real_log(self)

    monkeypatch.setattr(trainer_module.Trainer, "_log_train", killed_at_step_6)
    cfg = quick_cfg("train.max_steps=8", "train.save_every=4")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines[:-1]] == [1, 2, 3, 4, 5]
    assert load_checkpoint(run / "checkpoint_last.pt")["step"] == 4
    monkeypatch.undo()
    train(cfg, run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 9))


def test_wall_seconds_count_every_launch(quick_cfg, tmp_path) -> None:
    """wall_seconds, like train_seconds, covers all launches; a checkpoint saved before
    wall_seconds was kept resumes with its training time as the earlier wall time."""
    run = tmp_path / "run"
    train(quick_cfg("train.max_steps=2"), run)
    state = load_checkpoint(run / "checkpoint_last.pt")
    state["progress"].pop("wall_seconds", None)  # a checkpoint of before
    state["progress"]["train_seconds"] = 900.0
    save_checkpoint(run / "checkpoint_last.pt", state)
    first = train(quick_cfg("train.max_steps=3"), run)
    assert first["train_seconds"] > 900.0 and first["wall_seconds"] > first["train_seconds"]
    state = load_checkpoint(run / "checkpoint_last.pt")
    assert state["progress"]["wall_seconds"] > 900.0
    state["progress"]["wall_seconds"] = 5000.0
    save_checkpoint(run / "checkpoint_last.pt", state)
    second = train(quick_cfg("train.max_steps=4"), run)
    assert second["wall_seconds"] > 5000.0 and second["train_seconds"] < 1000.0


def test_resume_refuses_a_checkpoint_of_another_model(quick_cfg, tmp_path) -> None:
    run = tmp_path / "run"
    train(quick_cfg("train.max_steps=1"), run)
    with pytest.raises(CheckpointError, match=r"model.d_model: 64 != 32"):
        train(quick_cfg("train.max_steps=2", "model.d_model=32"), run)


def test_resume_refuses_a_checkpoint_of_another_vocabulary(quick_cfg, tmp_path) -> None:
    run = tmp_path / "run"
    train(quick_cfg("train.max_steps=1"), run)
    differs = r"vocabulary differs.*data.vocab_size=\d+ .*data.vocab_size=\d+"
    with pytest.raises(CheckpointError, match=differs):
        train(quick_cfg("train.max_steps=2", "data.toy.seed=99"), run)


def test_cfg_job_shows_the_composed_config() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nmt.train", "--cfg", "job", "encoding=combined", "encoding.k=4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "name: combined" in out and "k: 4" in out and "beam: 4" in out


DDP_WORKER = """
import os, sys, torch
from nmt.config import compose
from nmt.trainer import Trainer
run_dir, cache, *overrides = sys.argv[1:]
cfg = compose([*overrides, f"data.cache_dir={cache}"])
trainer = Trainer(cfg, run_dir)
trainer.run()
rank = os.environ.get("RANK", "0")
torch.save(trainer.model.state_dict(), os.path.join(run_dir, f"rank{rank}.pt"))
"""


def run_two_ranks(
    worker: Path, run_dir: Path, cache: Path, overrides: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess:
    """The DDP worker under torchrun, two gloo ranks on this machine."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [str(worker), str(run_dir), str(cache), *overrides],
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    # fp32: the comparison is of the all-reduce's arithmetic, which bf16's rounding would blur
    common = [*QUICK, "model.dropout=0.0", "train.max_steps=4", "train.device=cpu"]
    common.append("train.precision=fp32")
    cache = tmp_path / "cache"
    single, multi = tmp_path / "single", tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 2 ranks x 2 accumulated batches per step == 1 process x 4 batches per step.
    subprocess.run(
        [sys.executable, str(worker), str(single), str(cache), *common, "train.update_freq=4"],
        check=True,
        env=env,
        capture_output=True,
    )
    proc = run_two_ranks(worker, multi, cache, [*common, "train.update_freq=2"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(multi / "rank0.pt"), torch.load(multi / "rank1.pt")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    a, b = train_losses(single), train_losses(multi)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5), step
    reference = torch.load(single / "rank0.pt")
    for name in reference:
        # A key bias adds q.b to every logit of a query, which softmax cancels: its gradient
        # is zero up to rounding, and Adam scales that rounding noise up to a full step.
        if name.endswith("k_proj.bias"):
            continue
        assert torch.allclose(reference[name], rank0[name], atol=1e-5), name


@pytest.mark.slow
def test_sigkill_during_checkpoint_saves_never_leaves_an_unreadable_checkpoint(tmp_path) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "nmt.train",
        *QUICK,
        "model=small",
        "train.save_every=1",
        "train.keep_last=2",
        "train.max_steps=100000",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run}",
    ]
    kills = 0
    for delay in (0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.1, 1.25, 1.4, 1.55):
        last = run / "checkpoint_last.pt"
        before = last.stat().st_mtime_ns if last.exists() else None
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        # Wait for this process's first save (not the previous process's file), then kill it
        # somewhere in its loop: with save_every=1 most of that time is spent writing.
        while time.time() < deadline and (not last.exists() or last.stat().st_mtime_ns == before):
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        state = load_checkpoint(run / "checkpoint_last.pt")
        assert state["step"] >= 1
    assert kills == 10


@pytest.mark.slow
def test_default_nmt_train_learns_the_toy_task_and_needs_word_order(tmp_path) -> None:
    """`nmt-train` with no arguments: test BLEU >= 90; without positions it cannot be solved."""
    runs = {}
    for encoding in ("relative", "none"):  # side by side, one core each
        run = tmp_path / encoding
        runs[encoding] = (
            run,
            subprocess.Popen(
                [
                    "nmt-train",
                    f"encoding={encoding}",
                    f"hydra.run.dir={run}",
                    "train.threads=1",
                    f"data.cache_dir={tmp_path / encoding / 'cache'}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
    results = {}
    for encoding, (run, proc) in runs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        results[encoding] = json.loads((run / "results.json").read_text())
    bleu = {e: r["test"]["bleu"] for e, r in results.items()}
    assert bleu["relative"] >= 90, bleu
    assert bleu["none"] < bleu["relative"] - 30, bleu


def test_a_record_older_than_a_schema_key_is_finished_only_at_that_keys_default(tmp_path):
    """results.json of a run made before train.length_multiple existed lacks the key: the
    run is finished for a relaunch at the default (1) and not for any other value."""
    from nmt.results import run_settings

    cfg = compose(["train.max_steps=2"])
    settings = run_settings(cfg)
    del settings["train.length_multiple"]
    record = {"status": "finished", "settings": settings}
    (tmp_path / "results.json").write_text(json.dumps(record))
    assert finished_results(cfg, tmp_path) == record
    assert (
        finished_results(compose(["train.max_steps=2", "train.length_multiple=8"]), tmp_path)
        is None
    )
    assert finished_results(compose(["train.max_steps=3"]), tmp_path) is None


def test_resume_keeps_the_precision_the_run_started_in(quick_cfg, tmp_path) -> None:
    """train.precision=auto can resolve differently on another machine or code version: a
    resume that would switch precision part-way is refused with the setting that continues."""
    run = tmp_path / "run"
    train(quick_cfg("train.max_steps=1", "train.precision=fp32"), run)
    assert load_checkpoint(run / "checkpoint_last.pt")["precision"] == "fp32"
    with pytest.raises(CheckpointError, match=r"trained in fp32 .* pass train.precision=fp32"):
        train(quick_cfg("train.max_steps=2", "train.precision=bf16"), run)
    state = load_checkpoint(run / "checkpoint_last.pt")
    del state["precision"]  # a checkpoint of before the key: auto meant fp32 on the CPU
    state["config"]["train"]["precision"] = "auto"
    save_checkpoint(run / "checkpoint_last.pt", state)
    with pytest.raises(CheckpointError, match=r"trained in fp32"):
        train(quick_cfg("train.max_steps=2", "train.precision=bf16"), run)
    assert train(quick_cfg("train.max_steps=2", "train.precision=fp32"), run)["steps"] == 2


@pytest.mark.slow
def test_a_one_process_run_resumed_on_two_processes_goes_on_at_the_same_fraction(
    tmp_path,
) -> None:
    """Real processes: a run saved by one process and resumed by two gloo ranks splits each
    epoch's batches between the ranks, so each rank's list is about half as long; both ranks
    go on at the same fraction of the epoch, warned once, and stay in step."""
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    common = [*QUICK, "model.dropout=0.0", "train.device=cpu", "train.precision=fp32"]
    run, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(worker), str(run), str(cache), *common]
        + ["train.max_steps=3", "train.save_every=3"],
        check=True,
        env=env,
        capture_output=True,
    )
    old_batches = load_checkpoint(run / "checkpoint_last.pt")["batch_order"]["batches"]
    proc = run_two_ranks(
        worker, run, cache, [*common, "train.max_steps=4", "train.save_every=4"], env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = load_checkpoint(run / "checkpoint_last.pt")
    new_batches = after["batch_order"]["batches"]
    assert new_batches < old_batches  # each rank walks its share of the epoch
    went_on_at = round(3 * new_batches / old_batches)
    assert went_on_at < 3  # the plain position would skip pairs of this epoch
    assert after["progress"]["batch_in_epoch"] == went_on_at + 1
    assert proc.stderr.count("batches that epoch differently (processes 1 -> 2)") == 1
    assert f"goes on at batch {went_on_at} of {new_batches}" in proc.stderr
    rank0, rank1 = torch.load(run / "rank0.pt"), torch.load(run / "rank1.pt")
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)


def test_resume_under_another_batch_list_goes_on_at_the_same_fraction_of_the_epoch(
    quick_cfg, tmp_path, caplog
) -> None:
    """A resume with another token budget walks another batch list: the saved position is
    carried over as a fraction of the epoch, with a warning naming what changed, instead of
    the old batch number, which would repeat (or skip) most of the rest of the epoch."""
    run = tmp_path / "run"
    train(quick_cfg("train.max_steps=3", "train.save_every=3"), run)
    saved = load_checkpoint(run / "checkpoint_last.pt")
    assert saved["progress"]["epoch"] == 0 and saved["progress"]["batch_in_epoch"] == 3
    old_batches = saved["batch_order"]["batches"]
    del saved["batch_order"]  # as in a checkpoint of before the key: rebuilt from its config
    save_checkpoint(run / "checkpoint_last.pt", saved)
    with caplog.at_level(logging.WARNING, logger="nmt.train"):
        train(quick_cfg("train.max_steps=4", "train.save_every=4", "train.max_tokens=300"), run)
    after = load_checkpoint(run / "checkpoint_last.pt")
    new_batches = after["batch_order"]["batches"]
    assert new_batches > old_batches  # half the budget: more, smaller batches
    went_on_at = round(3 * new_batches / old_batches)
    assert went_on_at > 3  # the plain position would repeat pairs the run already saw
    assert after["progress"]["batch_in_epoch"] == went_on_at + 1
    assert "train.max_tokens 600 -> 300" in caplog.text
    assert f"goes on at batch {went_on_at} of {new_batches}" in caplog.text


def test_resume_under_the_same_batch_list_says_nothing(quick_cfg, tmp_path, caplog) -> None:
    run = tmp_path / "run"
    train(quick_cfg("train.max_steps=2", "train.save_every=2"), run)
    saved = load_checkpoint(run / "checkpoint_last.pt")
    # The oldest checkpoints hold neither the digest nor how many processes saved them.
    del saved["batch_order"], saved["rng_per_rank"]
    save_checkpoint(run / "checkpoint_last.pt", saved)
    with caplog.at_level(logging.WARNING, logger="nmt.train"):
        train(quick_cfg("train.max_steps=3", "train.save_every=3", "train.log_every=2"), run)
    assert "batches that epoch differently" not in caplog.text
    assert load_checkpoint(run / "checkpoint_last.pt")["progress"]["batch_in_epoch"] == 3


def test_resume_at_an_epoch_end_under_another_batch_list_says_nothing(
    quick_cfg, tmp_path, caplog
) -> None:
    """Nothing of the saved epoch is left, so nothing is realigned or warned about."""
    run = tmp_path / "run"
    train(quick_cfg("train.max_steps=1000", "train.max_epochs=1"), run)
    saved = load_checkpoint(run / "checkpoint_last.pt")
    assert saved["progress"]["batch_in_epoch"] == saved["batch_order"]["batches"]
    with caplog.at_level(logging.WARNING, logger="nmt.train"):
        train(quick_cfg("train.max_steps=1000", "train.max_epochs=2", "train.max_tokens=300"), run)
    assert "batches that epoch differently" not in caplog.text
    after = load_checkpoint(run / "checkpoint_last.pt")
    assert after["progress"]["epoch"] == 1
    assert after["progress"]["batch_in_epoch"] == after["batch_order"]["batches"]
