"""Ragged id arrays: packing, slicing, selection and the memory-mapped files."""

from __future__ import annotations

import numpy as np
import pytest

from nmt.data import EOS, RaggedIds
from nmt.data.store import RaggedIdsWriter

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


@pytest.mark.parametrize("parts", [[SEQS[:1], SEQS[1:3], [], SEQS[3:]], [], [[[]]]])
def test_writer_appends_make_the_files_save_makes(tmp_path, parts):
    """Streaming a split part by part gives the bytes of saving it whole (the cache stays valid)."""
    whole = RaggedIds.from_lists([s for part in parts for s in part], append=EOS)
    whole.save(tmp_path, "whole")
    writer = RaggedIdsWriter(tmp_path, "streamed")
    for part in parts:
        writer.append(RaggedIds.from_lists(part, append=EOS))
    assert writer.close().tolist() == whole.lengths.tolist()
    for suffix in ("ids.npy", "offsets.npy"):
        assert (tmp_path / f"streamed.{suffix}").read_bytes() == (
            tmp_path / f"whole.{suffix}"
        ).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "streamed.ids.npy",
        "streamed.offsets.npy",
        "whole.ids.npy",
        "whole.offsets.npy",
    ]  # no part file left behind
