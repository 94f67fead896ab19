"""Ragged id arrays: packing, slicing, selection and the memory-mapped files."""

from __future__ import annotations

import numpy as np
import pytest

from nmt.data import EOS, RaggedIds

SEQS = [[5, 6], [], [7], [8, 9, 10]]


def test_pack_index_and_slice():
    r = RaggedIds.from_lists(SEQS, append=EOS)
    assert len(r) == 4 and r.lengths.tolist() == [3, 1, 2, 4]
    assert [x.tolist() for x in r] == [[5, 6, EOS], [EOS], [7, EOS], [8, 9, 10, EOS]]
    assert r[-1].tolist() == [8, 9, 10, EOS] and r.flat.dtype == np.int32
    assert [x.tolist() for x in r[1:3]] == [[EOS], [7, EOS]]
    with pytest.raises(IndexError):
        r[4]


def test_select_and_concat():
    r = RaggedIds.from_lists(SEQS)
    kept = r.select(np.array([True, False, False, True]))
    assert [x.tolist() for x in kept] == [[5, 6], [8, 9, 10]]
    both = RaggedIds.concat([r, kept])
    assert [x.tolist() for x in both] == [*SEQS, [5, 6], [8, 9, 10]]
    assert len(RaggedIds.concat([])) == 0


def test_save_and_memory_mapped_load(tmp_path):
    r = RaggedIds.from_lists(SEQS, append=EOS)
    r.save(tmp_path, "x")
    loaded = RaggedIds.load(tmp_path, "x")
    assert isinstance(loaded.flat, np.memmap)
    assert [x.tolist() for x in loaded] == [x.tolist() for x in r]
