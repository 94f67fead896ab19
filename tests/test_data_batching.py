"""Token-budget batching: budget, coverage, determinism, resume, sharding, padding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from nmt.data import BOS, EOS, PAD, EncodedSplit, RaggedIds, collate, token_budget_batches
from nmt.data.batching import split_batches


def make_split(n: int = 600, seed: int = 0) -> EncodedSplit:
    """Random ids with realistic, correlated source/target lengths."""
    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for _ in range(n):
        ls = int(rng.integers(1, 60))
        lt = max(0, ls + int(rng.integers(-5, 6)))
        src.append(list(rng.integers(4, 100, ls)))
        tgt.append(list(rng.integers(4, 100, lt)))
    return EncodedSplit(
        "synthetic", RaggedIds.from_lists(src, append=EOS), RaggedIds.from_lists(tgt)
    )


@pytest.fixture(scope="module")
def split() -> EncodedSplit:
    return make_split()


def batches_of(split, max_tokens=1000, **kw):
    kw.setdefault("seed", 1)
    kw.setdefault("epoch", 0)
    return split_batches(split, max_tokens, **kw)


def padded_positions(split, idx, length_multiple: int = 1) -> int:
    b = collate(split, idx, length_multiple=length_multiple)
    return b.src.numel() + b.tgt_in.numel()


def test_every_batch_within_budget_counting_padded_positions(split):
    max_tokens = 700
    batches = batches_of(split, max_tokens)
    assert len(batches) > 10
    # The budget is exactly the padded positions of the tensors the model sees ...
    costs = [padded_positions(split, idx) for idx in batches]
    assert max(costs) <= max_tokens
    # ... and the same through the raw API with the lengths of the padded rows
    raw = token_budget_batches(split.src_lens, split.tgt_lens + 1, max_tokens, seed=1, epoch=0)
    assert raw == batches
    # the greedy filling uses the budget: most batches are more than 3/4 full
    assert np.median(costs) > 0.75 * max_tokens


@pytest.mark.parametrize("multiple", [8, 16])
def test_rounded_lengths_keep_the_budget_and_cut_the_shapes(split, multiple):
    """With train.length_multiple the budget counts the rounded lengths collate pads to, so
    it still holds; and far fewer distinct shapes recur (what lets a kernel cache hit)."""
    max_tokens = 700
    shapes = {1: set(), multiple: set()}
    for m in shapes:
        for epoch in range(3):
            for idx in batches_of(split, max_tokens, epoch=epoch, length_multiple=m):
                b = collate(split, idx, length_multiple=m)
                assert b.src.shape[1] % m == 0 and b.tgt_in.shape[1] % m == 0
                assert b.src.numel() + b.tgt_in.numel() <= max_tokens or len(idx) == 1
                shapes[m].add((*b.src.shape, b.tgt_in.shape[1]))
    assert len(shapes[multiple]) < len(shapes[1]) / 2
    rounded = batches_of(split, max_tokens, length_multiple=multiple)
    every = sorted(i for idx in rounded for i in idx)
    assert every == list(range(len(split)))


def test_rounded_collate_only_adds_padding():
    split = EncodedSplit(
        "tiny",
        RaggedIds.from_lists([[5, 6, 7], [8]], append=EOS),
        RaggedIds.from_lists([[9, 10], []]),
    )
    plain, rounded = collate(split, [0, 1]), collate(split, [0, 1], length_multiple=8)
    assert rounded.src.shape == rounded.tgt_in.shape == rounded.tgt_out.shape == (2, 8)
    for name in ("src", "tgt_in", "tgt_out"):
        a, b = getattr(plain, name), getattr(rounded, name)
        assert torch.equal(b[:, : a.shape[1]], a) and (b[:, a.shape[1] :] == PAD).all()
    assert (rounded.src_tokens, rounded.tgt_tokens) == (plain.src_tokens, plain.tgt_tokens)


def test_over_long_pair_gets_its_own_batch():
    src_lens, tgt_lens = [5, 500, 6, 7], [5, 400, 6, 7]
    batches = token_budget_batches(src_lens, tgt_lens, 100, seed=0, epoch=0)
    assert all(
        len(b) * (max(src_lens[i] for i in b) + max(tgt_lens[i] for i in b)) <= 100
        for b in batches
        if b != [1]
    )
    assert [1] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]


def test_every_pair_exactly_once_per_epoch(split):
    for epoch in range(3):
        flat = [i for b in batches_of(split, epoch=epoch) for i in b]
        assert sorted(flat) == list(range(len(split)))


def test_deterministic_from_seed_and_epoch_not_global_rng(split):
    first = batches_of(split, seed=7, epoch=3)
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    assert batches_of(split, seed=7, epoch=3) == first
    assert batches_of(split, seed=7, epoch=4) != first  # reshuffled each epoch
    assert batches_of(split, seed=8, epoch=3) != first


RESUMED_BATCHES = """
import json, sys, numpy as np
from nmt.data.batching import token_budget_batches
src, tgt = np.load(sys.argv[1]), np.load(sys.argv[2])
stop_epoch, stop_pos = int(sys.argv[3]), int(sys.argv[4])
np.random.seed(99)  # a restarted process has other global RNG state, hash seed and history
out = token_budget_batches(src, tgt, 2000, seed=5, epoch=stop_epoch)[stop_pos:]
for e in range(stop_epoch + 1, 4):
    out += token_budget_batches(src, tgt, 2000, seed=5, epoch=e)
print(json.dumps(out))
"""


def test_resume_in_a_new_process_sees_the_same_order(split, tmp_path):
    """A run stopped after 7 batches of epoch 2 keeps only (epoch, position); a new process
    (other hash seed, other global RNG state) recomputes the rest of the sequence."""
    import json
    import os
    import subprocess
    import sys

    src, tgt = split.src_lens, split.tgt_lens + 1
    np.save(tmp_path / "src.npy", src)
    np.save(tmp_path / "tgt.npy", tgt)
    uninterrupted = [
        b for e in range(4) for b in token_budget_batches(src, tgt, 2000, seed=5, epoch=e)
    ]
    seen = [b for e in range(2) for b in token_budget_batches(src, tgt, 2000, seed=5, epoch=e)]
    seen += token_budget_batches(src, tgt, 2000, seed=5, epoch=2)[:7]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RESUMED_BATCHES,
            str(tmp_path / "src.npy"),
            str(tmp_path / "tgt.npy"),
            "2",
            "7",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout
    assert seen + json.loads(out) == uninterrupted


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_equal_shares_covering_the_epoch(split, world_size):
    for epoch in range(2):
        shards = [
            batches_of(split, epoch=epoch, rank=r, world_size=world_size) for r in range(world_size)
        ]
        assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
        sets = [{i for b in s for i in b} for s in shards]
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not sets[a] & sets[b]
        flat = sorted(i for s in shards for b in s for i in b)
        assert flat == list(range(len(split)))  # nothing dropped, nothing twice
        assert max(padded_positions(split, idx) for s in shards for idx in s) <= 1000


def test_rank_must_be_below_world_size(split):
    with pytest.raises(ValueError, match="rank=2"):
        batches_of(split, rank=2, world_size=2)


def test_unshuffled_batches_are_sorted_by_length(split):
    batches = batches_of(split, shuffle=False)
    lens = [int(split.src_lens[i]) for b in batches for i in b]
    assert lens == sorted(lens)
    assert batches == batches_of(split, shuffle=False, seed=99, epoch=5)  # no randomness
    # source-only budget for decoding
    src_only = token_budget_batches(split.src_lens, None, 300, seed=0, epoch=0, shuffle=False)
    for idx in src_only:
        assert len(idx) * split.src_lens[idx].max() <= 300 or len(idx) == 1


def test_collate_pads_and_adds_bos_eos():
    split = EncodedSplit(
        "tiny",
        RaggedIds.from_lists([[5, 6, 7], [8]], append=EOS),
        RaggedIds.from_lists([[9, 10], []]),
    )
    b = collate(split, [0, 1])
    assert b.src.tolist() == [[5, 6, 7, EOS], [8, EOS, PAD, PAD]]
    assert b.tgt_in.tolist() == [[BOS, 9, 10], [BOS, PAD, PAD]]
    assert b.tgt_out.tolist() == [[9, 10, EOS], [EOS, PAD, PAD]]
    assert b.src.dtype == torch.long and b.tgt_out.dtype == torch.long
    assert (b.indices, b.src_tokens, b.tgt_tokens, len(b)) == ([0, 1], 6, 4, 2)
    moved = b.to("cpu")
    assert torch.equal(moved.tgt_in, b.tgt_in) and moved.indices == b.indices


def test_from_texts_encodes_input_for_translation(tmp_path):
    from nmt.data import train_vocabulary

    vocab = train_vocabulary(
        ["a b c d", "b c d e", "c d e f"] * 50,
        tmp_path / "v.model",
        vocab_size=270,
        model_type="bpe",
    )
    split = EncodedSplit.from_texts(vocab, ["a b c", "d e"])
    assert [int(s[-1]) for s in split.src] == [EOS, EOS]
    assert split.tgt_lens.tolist() == [0, 0]
    assert [vocab.decode(s) for s in split.src] == ["a b c", "d e"]
