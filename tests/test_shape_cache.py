"""ShapeCache: the length-keyed tensors the attention encodings reuse stay bounded."""

from __future__ import annotations

import torch

from nmt.encodings.base import ShapeCache


def counting_maker(n: int):
    made = []

    def make() -> torch.Tensor:
        made.append(n)
        return torch.zeros(n)

    return make, made


def test_a_shape_is_built_once_and_reused() -> None:
    cache = ShapeCache(max_elements=100)
    make, made = counting_maker(10)
    first = cache.get((10,), make)
    assert cache.get((10,), make) is first and made == [10]


def test_inference_mode_tensors_are_kept_apart() -> None:
    """A tensor made under inference_mode cannot enter a pass autograd records later."""
    cache = ShapeCache(max_elements=100)
    make, made = counting_maker(10)
    with torch.inference_mode():
        inner = cache.get((10,), make)
    outer = cache.get((10,), make)
    assert outer is not inner and made == [10, 10]
    assert not outer.is_inference()


def test_the_cache_never_holds_more_than_its_bound() -> None:
    cache = ShapeCache(max_elements=25)
    for n in (10, 10, 10):  # the third would pass 25: the cache starts again
        cache.get((n, len(cache._tensors)), counting_maker(n)[0])
    assert cache._elements <= 25
    make, made = counting_maker(30)  # over the bound alone: built every time, never kept
    big = cache.get((30,), make)
    assert cache.get((30,), make) is not big and made == [30, 30]


def test_nothing_is_cached_while_torch_compiles(monkeypatch) -> None:
    """Under torch.compile the lengths are symbolic: a cache keyed by them would guard on
    (and hold) one shape's tensor, so the graph builds the tensor itself."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    cache = ShapeCache(max_elements=100)
    make, made = counting_maker(10)
    cache.get((10,), make)
    cache.get((10,), make)
    assert made == [10, 10] and not cache._tensors
