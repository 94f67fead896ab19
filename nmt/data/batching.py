"""Token-budget batches by length bucket, shuffled per epoch, sharded over ranks; padding.

The batch order of an epoch is a pure function of (seed, epoch, lengths, max_tokens, rank,
world_size): it uses its own random generator, never the global one. A resumed run that
knows its epoch and how many batches of it were done recomputes the same list and skips
that many, and sees exactly the data order of an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from nmt.data.store import EncodedSplit
from nmt.data.vocab import BOS, EOS, PAD


def round_up(lengths: Any, multiple: int) -> Any:
    """A length, or an array of them, rounded up to a multiple of `multiple` (1: unchanged)."""
    return -(-lengths // multiple) * multiple


def batch_cost(n: int, max_src: int, max_tgt: int | None) -> int:
    """Padded positions of a batch of n rows: n * (longest source row + longest target row)."""
    return n * (max_src + (max_tgt or 0))


def token_budget_batches(
    src_lens: Sequence[int] | np.ndarray,
    tgt_lens: Sequence[int] | np.ndarray | None,
    max_tokens: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """Index batches with batch_size * (max src_len + max tgt_len) <= max_tokens.

    The lengths are those of the padded rows: for training, `src_lens` = source ids incl.
    EOS (`EncodedSplit.src_lens`) and `tgt_lens` = target ids + 1 (the BOS of `tgt_in`, or
    the EOS of `tgt_out`); `split_batches` passes exactly these, so that
    `src.numel() + tgt_in.numel() <= max_tokens` for every `collate`d batch. `tgt_lens=None`
    budgets sources only (decoding). A single pair over the budget forms a batch of its own.

    With shuffle=False the batches come in order of increasing length (decoding: callers
    put outputs back in input order with the indices). With world_size > 1, all ranks
    compute the same list and rank r takes batches r, r + world_size, ...; the list is first
    made a multiple of world_size by halving the largest batches, so every rank gets the
    same number of batches and every pair is still used exactly once per epoch.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    src = np.asarray(src_lens, dtype=np.int64)
    tgt = None if tgt_lens is None else np.asarray(tgt_lens, dtype=np.int64)
    if tgt is not None and len(tgt) != len(src):
        raise ValueError(f"{len(src)} source lengths but {len(tgt)} target lengths")
    if len(src) == 0:
        return []
    rng = np.random.default_rng([int(seed) % (1 << 64), int(epoch) % (1 << 64)])
    # Sort by source then target length; equal lengths are ordered randomly per epoch when
    # shuffling, so batch contents change between epochs, and by index otherwise.
    tie = rng.permutation(len(src)) if shuffle else np.arange(len(src))
    keys = (tie, src) if tgt is None else (tie, tgt, src)
    order = np.lexsort(keys)
    batches = _fill(order, src, tgt, max_tokens)
    if world_size > 1:
        _balance(batches, world_size)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches[rank::world_size]


def split_batches(
    split: EncodedSplit,
    max_tokens: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    length_multiple: int = 1,
) -> list[list[int]]:
    """`token_budget_batches` over a split's padded row lengths (source incl. EOS, target + 1),
    each rounded up to a multiple of `length_multiple`, as `collate` pads them."""
    return token_budget_batches(
        round_up(split.src_lens, length_multiple),
        round_up(split.tgt_lens + 1, length_multiple),
        max_tokens,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        rank=rank,
        world_size=world_size,
    )


def _fill(
    order: np.ndarray, src: np.ndarray, tgt: np.ndarray | None, max_tokens: int
) -> list[list[int]]:
    """Greedy: walk the sorted indices, start a new batch when the next one would overflow."""
    batches: list[list[int]] = []
    current: list[int] = []
    max_s = max_t = 0
    for i in order.tolist():
        s = int(src[i])
        t = None if tgt is None else int(tgt[i])
        new_s = max(max_s, s)
        new_t = None if t is None else max(max_t, t)
        if current and batch_cost(len(current) + 1, new_s, new_t) > max_tokens:
            batches.append(current)
            current, new_s, new_t = [], s, t
        current.append(i)
        max_s, max_t = new_s, (new_t or 0)
    if current:
        batches.append(current)
    return batches


def _balance(batches: list[list[int]], world_size: int) -> None:
    """Split the largest batches in two until their number is a multiple of world_size."""
    while len(batches) % world_size:
        j = max(range(len(batches)), key=lambda k: len(batches[k]))
        if len(batches[j]) < 2:
            break  # fewer pairs than ranks: the caller gets uneven shares
        half = len(batches[j]) // 2
        batches[j : j + 1] = [batches[j][:half], batches[j][half:]]
    while len(batches) % world_size:
        batches.pop()  # only when there are fewer pairs than ranks


@dataclass
class Batch:
    """Padded tensors of one batch: src (B,S); tgt_in = [BOS]+tgt and tgt_out = tgt+[EOS] (B,T)."""

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    indices: list[int]
    src_tokens: int  # non-pad source positions (EOS included)
    tgt_tokens: int  # non-pad target positions of tgt_out: the tokens the loss is over

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with its tensors on `device`."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=non_blocking)
            values[f.name] = value
        return Batch(**values)


def collate(
    split: EncodedSplit, indices: Sequence[int], pad_id: int = PAD, length_multiple: int = 1
) -> Batch:
    """Pad the pairs at `indices` of `split` on the right into a Batch, its source and target
    lengths rounded up to a multiple of `length_multiple` (fewer distinct shapes, for devices
    whose matrix units want aligned ones)."""
    indices = [int(i) for i in indices]
    srcs = [split.src[i] for i in indices]
    tgts = [split.tgt[i] for i in indices]
    n = len(indices)
    src_len = round_up(max((len(s) for s in srcs), default=0), length_multiple)
    tgt_len = round_up(max((len(t) for t in tgts), default=0) + 1, length_multiple)
    src = np.full((n, src_len), pad_id, dtype=np.int64)
    tgt_in = np.full((n, tgt_len), pad_id, dtype=np.int64)
    tgt_out = np.full_like(tgt_in, pad_id)
    for row, (s, t) in enumerate(zip(srcs, tgts, strict=True)):
        src[row, : len(s)] = s
        tgt_in[row, 0] = BOS
        tgt_in[row, 1 : len(t) + 1] = t
        tgt_out[row, : len(t)] = t
        tgt_out[row, len(t)] = EOS
    return Batch(
        src=torch.from_numpy(src),
        tgt_in=torch.from_numpy(tgt_in),
        tgt_out=torch.from_numpy(tgt_out),
        indices=indices,
        src_tokens=sum(len(s) for s in srcs),
        tgt_tokens=sum(len(t) + 1 for t in tgts),
    )
