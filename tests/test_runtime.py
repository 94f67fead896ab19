"""CPU allocator setting: freed tensor memory is reused instead of faulted in again each step."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from nmt.config import ConfigError, compose
from nmt.config_checks import validate
from nmt.runtime import MALLOC_ENV, keep_freed_cpu_memory

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc mallopt",
)

# In a fresh process (mallopt is process-wide and cannot be undone): page faults of
# allocating, filling and freeing a 64 MiB tensor (above glibc's largest dynamic mmap
# threshold, like a (B*T, V) logits tensor), before and after keep_freed_cpu_memory.
FAULTS_SCRIPT = """
import json, resource, sys, torch
from nmt.runtime import keep_freed_cpu_memory

def faults(rounds=4):
    torch.ones(16 * 2**20)  # one round first: the kept run's heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        torch.ones(16 * 2**20)  # float32: 64 MiB, every page written
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults()
applied = keep_freed_cpu_memory(int(sys.argv[1]))
print(json.dumps({"default": default, "applied": applied, "after": faults()}))
"""


def run_faults(mib: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (*MALLOC_ENV, "GLIBC_TUNABLES")}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT, str(mib)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@glibc_only
def test_kept_memory_stops_the_page_faults_of_large_tensors():
    r = run_faults(2047)
    if 0 < r["applied"] < 64:
        pytest.skip(
            f"this glibc caps the mmap threshold at {r['applied']} MiB, below the 64 MiB tensor"
        )
    assert r["applied"] == 2047
    # glibc's default unmaps each 64 MiB block on free: 4 rounds x 16,384 pages (fewer with
    # transparent huge pages), against ~none once the block stays in the heap.
    assert r["default"] > 0
    assert r["after"] * 4 <= r["default"], r


@pytest.mark.slow
@glibc_only
def test_zero_keeps_glibc_defaults():
    r = run_faults(0)
    assert not r["applied"]
    assert r["after"] * 4 > r["default"], r


@pytest.mark.parametrize(
    "name, value",
    [
        ("GLIBC_TUNABLES", "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=1048576"),
        ("MALLOC_MMAP_THRESHOLD_", "1048576"),
    ],
)
def test_environment_thresholds_win(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert keep_freed_cpu_memory(2047) == 0


def test_out_of_range_is_refused_not_wrapped():
    # ctypes.c_int would wrap 4096 MiB to 0 bytes: every allocation mmapped, trimmed on free.
    with pytest.raises(ValueError, match="malloc_keep_mib=4096"):
        keep_freed_cpu_memory(4096)


def test_malloc_keep_mib_out_of_range_is_named():
    with pytest.raises(ConfigError, match="train.malloc_keep_mib=4096"):
        validate(compose(["train.malloc_keep_mib=4096"]))


KERNEL_CACHE_PROBE = """
import json, os, sys
import torch
from nmt.runtime import bound_kernel_caches
applied = bound_kernel_caches(int(sys.argv[1]))
a = torch.randn(8, 16, dtype=torch.bfloat16)
for n in range(1, 200):  # 200 shapes: with 1,024 entries every kernel would stay
    a[:1].expand(n, 16) @ torch.randn(16, 8, dtype=torch.bfloat16)
print(json.dumps({"applied": applied, "env": {k: os.environ.get(k) for k in sys.argv[2:]}}))
"""


def run_kernel_probe(entries: int, env: dict[str, str] | None = None) -> dict:
    from nmt.runtime import KERNEL_CACHE_ENV

    out = subprocess.run(
        [sys.executable, "-c", KERNEL_CACHE_PROBE, str(entries), *KERNEL_CACHE_ENV],
        capture_output=True,
        text=True,
        check=True,
        env={**{k: v for k, v in os.environ.items() if k not in KERNEL_CACHE_ENV}, **(env or {})},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_both_kernel_caches_are_bounded() -> None:
    got = run_kernel_probe(64)
    assert got["applied"] == 64
    assert set(got["env"].values()) == {"64"}  # both caches: PyTorch's and oneDNN's


def test_a_kernel_cache_size_set_in_the_environment_wins() -> None:
    got = run_kernel_probe(64, {"LRU_CACHE_CAPACITY": "8"})
    assert got["applied"] == 0 and got["env"]["LRU_CACHE_CAPACITY"] == "8"
    assert got["env"]["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] is None


def test_zero_keeps_the_library_defaults() -> None:
    got = run_kernel_probe(0)
    assert got["applied"] == 0 and set(got["env"].values()) == {None}


# The decoding commands run in a fresh process, then the 64 MiB fault count is measured
# again: after nmt-translate / nmt-evaluate the blocks must stay in the heap as in training.
COMMAND_FAULTS_SCRIPT = (
    FAULTS_SCRIPT.split("default = faults()")[0]
    + """
import importlib
default = faults()
command = importlib.import_module(sys.argv[1])
code = command.main(sys.argv[2:])
print(json.dumps({"default": default, "code": code, "after": faults()}))
"""
)


@pytest.mark.slow
@glibc_only
@pytest.mark.parametrize("command", ["nmt.translate", "nmt.evaluate"])
def test_decoding_commands_keep_freed_memory_as_training_does(command, ckpt, tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("a b c\nd e\n")
    args = ["-i", str(src), "-o", str(tmp_path / "out.txt")] if command == "nmt.translate" else []
    argv = [command, str(ckpt), *args, "--quiet", "--beam", "2"]
    if command == "nmt.evaluate":
        argv += ["--max-sentences", "4", "-o", str(tmp_path / "eval")]
    env = {k: v for k, v in os.environ.items() if k not in (*MALLOC_ENV, "GLIBC_TUNABLES")}
    out = subprocess.run(
        [sys.executable, "-c", COMMAND_FAULTS_SCRIPT, *argv],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["code"] == 0
    assert r["default"] > 0 and r["after"] * 4 <= r["default"], r


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected",
    [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")],
)
def test_auto_precision_on_the_cpu_follows_its_bf16_units(monkeypatch, avx512_bf16, amx, expected):
    import torch

    from nmt.runtime import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("fp32", cpu) == "fp32"  # an explicit choice always stands
