"""The CPU dropout mask: the drop rate, the scale, independence, seeding, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nmt.dropout import dropout, quantised_drop_probability

N = 3_000_001  # not a multiple of the four words per draw


def _sigmas(count: int, n: int, p: float) -> float:
    return abs(count - n * p) / math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_drops_at_the_rate_asked_and_scales_what_stays(p: float) -> None:
    torch.manual_seed(0)
    y = dropout(torch.ones(N), p, True)
    dropped = int((y == 0).sum())
    assert _sigmas(dropped, N, p) < 5
    q = quantised_drop_probability(p)
    assert abs(q - p) <= 2.0**-16
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - q)))
    assert abs(float(y.double().mean()) - 1.0) < 5 * math.sqrt(p / (1 - p) / N)


def test_neighbouring_elements_drop_independently() -> None:
    # Four elements share one 64-bit draw: a shared or constant bit would correlate them,
    # and the top word, one bit shorter than the others, must drop as often.
    torch.manual_seed(1)
    p = 0.5
    y = dropout(torch.ones(N - 1), p, True).view(-1, 4) == 0  # (draws, words of a draw)
    for column in range(4):
        assert _sigmas(int(y[:, column].sum()), y.shape[0], p) < 5
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3)]:
        assert _sigmas(int((y[:, a] & y[:, b]).sum()), y.shape[0], p * p) < 5
    across = y[:-1, 3] & y[1:, 0]  # the last word of one draw, the first of the next
    assert _sigmas(int(across.sum()), across.numel(), p * p) < 5


def test_a_seed_fixes_the_mask_and_successive_calls_differ() -> None:
    x = torch.randn(37, 11)
    torch.manual_seed(3)
    a, b = dropout(x, 0.2, True), dropout(x, 0.2, True)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2, True), a)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_keeps_the_dtype_and_the_gradient_is_the_mask(dtype: torch.dtype) -> None:
    x = torch.randn(64, 33, dtype=dtype, requires_grad=True)
    y = dropout(x, 0.25, True)
    assert y.dtype == dtype and y.shape == x.shape
    y.sum().backward()
    multiplier = torch.where(y == 0, 0.0, 1 / (1 - quantised_drop_probability(0.25)))
    torch.testing.assert_close(x.grad, multiplier.to(dtype))


def test_is_the_identity_in_evaluation_and_at_zero() -> None:
    x = torch.randn(5, 7)
    assert dropout(x, 0.3, False) is x
    assert dropout(x, 0.0, True) is x


def test_probabilities_that_round_to_one_fall_back_to_torch() -> None:
    x = torch.randn(5, 7)
    torch.manual_seed(0)
    expected = F.dropout(x, 1.0 - 2.0**-20, True)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 1.0 - 2.0**-20, True), expected)
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))


def test_a_probability_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(torch.ones(3), -0.1, True)
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(torch.ones(3), 1.5, False)
