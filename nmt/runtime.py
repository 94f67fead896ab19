"""Where and in which precision to run: device and autocast choices shared by every command,
and a training process's setup (threads, allocator, distributed process group)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from nmt.config import (
    DEVICES,
    KERNEL_CACHE_ENTRIES,
    MALLOC_KEEP_MAX_MIB,
    MALLOC_KEEP_MIB,
    ConfigError,
)

# Training's messages keep the command's logger name, whichever module emits them.
log = logging.getLogger("nmt.train")


def resolve_device(name: str, index: int = 0) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; an explicit device must be available."""
    if name not in DEVICES:
        raise ConfigError(f"device {name!r} is unknown; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", index)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda: no CUDA device is available (use auto or cpu)")
        return torch.device("cuda", index)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps: Apple MPS is not available (use auto or cpu)")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), not emulated."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, torch >= 2.3
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 on GPUs that support it, fp16 (with a grad scaler) on older GPUs, bf16 on
    CPUs with native bf16 matmuls (the same BLEU as fp32 and 1.4-1.75x its speed in Multi30k
    runs, docs/results.md), else fp32."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a precision (`fp32`: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# mallopt(3) parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc before ~2.35 refuses an mmap threshold above this (64-bit HEAP_MAX_SIZE / 2)
OLD_GLIBC_MMAP_MAX_MIB = 32
# Environment settings of the same two thresholds: the user's choice wins.
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
MALLOC_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def keep_freed_cpu_memory(mib: int) -> int:
    """Make glibc keep freed blocks up to `mib` MiB for reuse instead of returning them to the OS.

    By default glibc serves blocks above its mmap threshold (128 KiB, rising to at most
    32 MiB) with a fresh mmap and unmaps them on free, so every training step page-faults
    its largest tensors in again. Both thresholds at `mib` keep that memory in the heap:
    the resident size stays at the peak, the faults stop. Returns the MiB applied: fewer
    on an older glibc that caps the threshold, 0 for `mib` 0, off Linux/glibc, or when
    the environment already sets either threshold.
    """
    if not 0 <= mib <= MALLOC_KEEP_MAX_MIB:
        raise ValueError(f"malloc_keep_mib={mib} must be between 0 and {MALLOC_KEEP_MAX_MIB}")
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (
        mib == 0
        or not sys.platform.startswith("linux")
        or any(k in os.environ for k in MALLOC_ENV)
        or any(t in tunables for t in MALLOC_TUNABLES)
    ):
        return 0
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return 0
    # The mmap threshold first: setting the trim threshold alone would also freeze glibc's
    # dynamic mmap threshold at 128 KiB, more faults than the default.
    for size in dict.fromkeys((mib, min(mib, OLD_GLIBC_MMAP_MAX_MIB))):
        if mallopt(M_MMAP_THRESHOLD, ctypes.c_int(size * 2**20)):
            mallopt(M_TRIM_THRESHOLD, ctypes.c_int(size * 2**20))
            return size
    return 0


# PyTorch's cache of oneDNN (ideep) kernels and oneDNN's own primitive cache.
KERNEL_CACHE_ENV = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def bound_kernel_caches(entries: int) -> int:
    """Keep at most `entries` oneDNN kernels per cache (0: leave the defaults of 1,024).

    bf16 matmuls on the CPU run through oneDNN, which compiles a kernel, with its scratch
    memory, for every input shape and keeps it: variable-length batches and beam search
    meet thousands of shapes. Both caches read their size once, at their first use, so
    this must run before the process's first bf16 matmul. Returns the entries applied
    (0 when `entries` is 0 or the environment already sets either variable).
    """
    if entries == 0 or any(var in os.environ for var in KERNEL_CACHE_ENV):
        return 0
    for var in KERNEL_CACHE_ENV:
        os.environ[var] = str(entries)
    return entries


def tune_cpu_memory(
    device: torch.device,
    kernel_cache_entries: int = KERNEL_CACHE_ENTRIES,
    malloc_keep_mib: int = MALLOC_KEEP_MIB,
) -> tuple[int, int]:
    """On the CPU, bound oneDNN's kernel caches and keep freed blocks for reuse, before the
    first matmul; training and decoding both call it. Returns what `bound_kernel_caches`
    and `keep_freed_cpu_memory` applied ((0, 0) elsewhere).

    Decoding needs the kept blocks as much as training: every beam step makes the
    `(rows, V)` logits, their log-probabilities and the candidate scores (tens of MiB each
    for a few hundred sentences), and without them each is mapped and faulted in afresh.
    """
    if device.type != "cpu":
        return 0, 0
    return bound_kernel_caches(kernel_cache_entries), keep_freed_cpu_memory(malloc_keep_mib)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock timing covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_resident_mib() -> float | None:
    """The most resident memory this process has held so far, in MiB (None where the
    platform does not report it)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1 << 20) if sys.platform == "darwin" else peak / (1 << 10)


def describe_hardware(device: torch.device) -> str:
    """A one-line name of what runs the work, for benchmark tables: GPU name or CPU model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


@dataclass
class Runtime:
    """Where a training process runs: its device, precision and place among the ranks."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)


def init_runtime(cfg: Any) -> Runtime:
    """Set up this process for training from `cfg.train`: device, torchrun's process group
    (read from RANK / WORLD_SIZE / LOCAL_RANK), thread count, oneDNN's kernel caches and the
    glibc allocator."""
    t = cfg.train
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(t.device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=t.dist_timeout_minutes))
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    entries, kept = tune_cpu_memory(device, t.kernel_cache_entries, t.malloc_keep_mib)
    if entries:
        log.info("oneDNN keeps %d kernels per cache (train.kernel_cache_entries)", entries)
    if kept:
        log.info("glibc keeps freed blocks up to %d MiB for reuse (train.malloc_keep_mib)", kept)
        if kept < t.malloc_keep_mib:
            log.warning(
                "this glibc caps train.malloc_keep_mib at %d MiB: larger tensors are still "
                "unmapped on free",
                kept,
            )
    return Runtime(device, resolve_precision(t.precision, device), rank, world_size)
