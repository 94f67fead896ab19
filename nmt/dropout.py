"""Dropout whose CPU mask costs a fraction of `torch.bernoulli_`'s.

On the CPU, `F.dropout` draws one Bernoulli sample per element: about 6 ns each, the
costliest single operator of a bf16 training step (docs/benchmarks.md, "Where a training
step's time goes"). `dropout` here draws 64-bit integers from the same seeded generator
and uses each as four 16-bit words, one per element, so one generator call serves four
elements. The drop probability is quantised to a multiple of 2**-15 (0.1 becomes
3277 / 32768 = 0.100006) and the kept elements are scaled by the exact inverse of the
quantised keep probability, so the output's expectation equals the input's exactly.
CUDA, MPS and compiled graphs keep `F.dropout`: their kernels already fuse the mask.
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

# Drop probabilities are multiples of 1 / DROP_LEVELS.
DROP_LEVELS = 1 << 15
WORDS_PER_DRAW = 4  # 16-bit words in one int64
# The profiler range around the CPU mask: a step profile counts what runs in it as dropout.
PROFILER_RANGE = "dropout"
# `random_()` on int64 fills the low 63 bits uniformly. Read as signed 16-bit words, the
# three low words are uniform on [-2**15, 2**15) and the top one on [0, 2**15).
_TOP_WORD = WORDS_PER_DRAW - 1 if sys.byteorder == "little" else 0


def quantised_drop_probability(p: float) -> float:
    """The drop probability `dropout` applies for `p`: `p` rounded to a multiple of 2**-15."""
    return round(p * DROP_LEVELS) / DROP_LEVELS


@functools.lru_cache(maxsize=16)
def _drop_below_minus_one(levels: int, dtype: torch.dtype) -> Tensor:
    """Per word of a draw, one less than the value below which the word drops with
    probability levels / 2**15: for a full word, twice the levels from its minimum; for the
    top word, the levels themselves. Built once per probability, not per call (it is only
    ever read)."""
    full = 2 * levels - DROP_LEVELS
    below = [levels if i == _TOP_WORD else full for i in range(WORDS_PER_DRAW)]
    return torch.tensor(below, dtype=dtype) - 1.0


def keep_multiplier(shape: torch.Size, p: float, dtype: torch.dtype) -> Tensor:
    """A CPU tensor of `shape`: 0 where an element drops, 1 / (1 - p') where it stays."""
    n = shape.numel()
    levels = round(p * DROP_LEVELS)
    draws = torch.empty(-(-n // WORDS_PER_DRAW), dtype=torch.int64).random_()
    work = torch.float64 if dtype == torch.float64 else torch.float32  # the scale's precision
    words = draws.view(torch.int16).view(-1, WORDS_PER_DRAW).to(work)  # (n / 4, 4)
    # The words are exact integers in float32, so (w - threshold + 1) clamped to [0, 1] is
    # the 0/1 keep indicator, computed without a bool tensor (whose kernels are scalar).
    keep = words.sub_(_drop_below_minus_one(levels, work)).clamp_(0.0, 1.0)
    keep.mul_(DROP_LEVELS / (DROP_LEVELS - levels))
    return keep.view(-1)[:n].view(shape).to(dtype)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """`F.dropout(x, p, training)`, with the cheaper mask on the CPU in eager mode."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    cheap = x.device.type == "cpu" and quantised_drop_probability(p) < 1.0
    if not cheap or torch.compiler.is_compiling():
        return F.dropout(x, p, True)
    with torch.profiler.record_function(PROFILER_RANGE):
        return x * keep_multiplier(x.shape, p, x.dtype)
