"""The training benchmark and profiler in scripts/: what they classify and what they write."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "op,phase,group",
    [
        ("aten::mm", "backward", "matmul"),
        ("aten::addmm", "forward", "matmul"),
        ("aten::mm", "loss", "matmul"),  # the fused loss projects: still a matmul
        ("aten::_log_softmax_backward_data", "backward", "loss over the vocabulary"),
        ("aten::exp_", "loss", "loss over the vocabulary"),
        ("aten::native_layer_norm_backward", "backward", "layer norm"),
        ("aten::bernoulli_", "forward", "dropout"),
        ("aten::random_", "dropout", "dropout"),  # inside nmt.dropout's profiler range
        ("aten::clamp_", "dropout", "dropout"),
        ("aten::_softmax", "forward", "attention softmax / masks"),
        ("aten::masked_fill", "forward", "attention softmax / masks"),
        ("aten::scatter_add", "forward", "position terms (gather / scatter)"),
        ("aten::_to_copy", "forward", "dtype casts / copies"),
        ("aten::_foreach_mul_", "optimizer", "optimizer (Adam, zero_grad)"),
        ("autograd::engine::evaluate_function: MmBackward0", "backward", None),
        ("aten::tanh", "forward", "other element-wise / reductions"),
    ],
)
def test_profiler_groups_operators_by_name_and_phase(op: str, phase: str, group) -> None:
    profile = load_script("profile_train")
    assert profile.op_group(op, phase) == (group or profile.AUTOGRAD_GROUP)
    assert profile.op_group(op, phase) in profile.ORDER


@pytest.mark.slow
def test_bench_train_times_every_variant_and_writes_its_table(multi30k_dir, tmp_path) -> None:
    out = tmp_path / "bench"
    env = {**os.environ, "NMT_DATA_DIR": str(multi30k_dir.parent)}
    command = [sys.executable, str(SCRIPTS / "bench_train.py"), "model=tiny"]
    command += ["--encodings", "absolute,relative", "--corpus", "multi30k", "--batches", "1"]
    command += ["--rounds", "2", "--warmup", "0", "--precisions", "fp32,bf16"]
    command += ["--max-tokens", "512", "--threads", "1", "--out-dir", str(out)]
    subprocess.run(command, check=True, capture_output=True, env=env)
    rows = json.loads((out / "bench_train.json").read_text())["rows"]
    got = {(r["encoding"], r["precision"]): r for r in rows}
    assert sorted(got) == [(e, p) for e in ("absolute", "relative") for p in ("bf16", "fp32")]
    assert got["absolute", "bf16"]["ratio_to_absolute"] == 1.0
    assert got["relative", "fp32"]["ratio_to_fp32_eager"] == 1.0
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
    assert "| multi30k | relative | bf16 | no |" in (out / "bench_train.md").read_text()


def test_bench_train_refuses_an_unknown_compile_mode(tmp_path) -> None:
    env = {**os.environ, "NMT_DATA_DIR": str(tmp_path)}
    command = [sys.executable, str(SCRIPTS / "bench_train.py"), "--compile", "off,fast"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert "--compile takes off, on, static" in done.stderr
