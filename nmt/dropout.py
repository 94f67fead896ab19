"""Dropout whose CPU mask costs a third of `torch.bernoulli_`'s.

On the CPU, `F.dropout` draws one Bernoulli sample per element: about 6 ns each, the
costliest single operator of a bf16 training step (docs/benchmarks.md, "Where a training
step's time goes"). `dropout` here draws 64-bit words from the same seeded generator and
uses each as three independent 16-bit uniforms, so one generator call serves three
elements. The drop probability is quantised to a multiple of 2**-16 (0.1 becomes
6554 / 65536 = 0.100006) and the kept elements are scaled by the exact inverse of the
quantised keep probability, so the output's expectation equals the input's exactly.
CUDA, MPS and compiled graphs keep `F.dropout`: their kernels already fuse the mask.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor

WORD_BITS = 16
WORD_LEVELS = 1 << WORD_BITS
# `random_()` on int64 fills the low 63 bits; of the four 16-bit words in each value, the
# most significant one has a constant top bit and is not used.
WORDS_PER_DRAW = 3
# The profiler range around the CPU mask: a step profile counts what runs in it as dropout.
PROFILER_RANGE = "dropout"
_USED_WORDS = slice(0, WORDS_PER_DRAW) if sys.byteorder == "little" else slice(1, None)


def quantised_drop_probability(p: float) -> float:
    """The drop probability `dropout` applies for `p`: `p` rounded to a multiple of 2**-16."""
    return round(p * WORD_LEVELS) / WORD_LEVELS


def keep_multiplier(shape: torch.Size, p: float, dtype: torch.dtype) -> Tensor:
    """A CPU tensor of `shape`: 0 where an element drops, 1 / (1 - p') where it stays."""
    n = shape.numel()
    drop_levels = round(p * WORD_LEVELS)
    draws = torch.empty(-(-n // WORDS_PER_DRAW), dtype=torch.int64).random_()
    words = draws.view(torch.int16).view(-1, 4)[:, _USED_WORDS]  # (n / 3, 3), strided
    # A word w (signed, uniform on [-2**15, 2**15)) stays iff w >= drop_levels - 2**15.
    # In float32 the words are exact integers, so (w - threshold + 1) clamped to [0, 1] is
    # the 0/1 keep indicator, computed without a bool tensor (whose kernels are scalar).
    threshold = drop_levels - WORD_LEVELS // 2
    keep = words.to(torch.float32).sub_(threshold - 1).clamp_(0.0, 1.0)
    keep.mul_(WORD_LEVELS / (WORD_LEVELS - drop_levels))
    return keep.view(-1)[:n].view(shape).to(dtype)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """`F.dropout(x, p, training)`, with the cheaper mask on the CPU in eager mode."""
    if not training or p == 0.0:
        return x
    cheap = x.device.type == "cpu" and quantised_drop_probability(p) < 1.0
    if not cheap or torch.compiler.is_compiling():
        return F.dropout(x, p, True)
    with torch.profiler.record_function(PROFILER_RANGE):
        return x * keep_multiplier(x.shape, p, x.dtype)
