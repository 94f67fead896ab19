"""Which batches each training step trains on, on every rank, from a saved position on.

An epoch's batch order is a pure function of the seed and the epoch (`split_batches`), so a
run resumed at (epoch, batches done) sees exactly the data of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np

from nmt.data import EncodedSplit
from nmt.data.batching import split_batches

# A batch of training: (epoch, its position in the epoch + 1, its sentence indices).
Batch = tuple[int, int, list[int]]


class TrainBatches:
    """Every rank's token-budget batches of each epoch of a training split."""

    def __init__(
        self,
        split: EncodedSplit,
        max_tokens: int,
        *,
        seed: int,
        rank: int,
        world_size: int,
        length_multiple: int = 1,
    ) -> None:
        self.split, self.max_tokens, self.seed = split, max_tokens, seed
        self.rank, self.world_size = rank, world_size
        self.length_multiple = length_multiple
        self._shares: dict[int, list[list[list[int]]]] = {}  # epoch -> every rank's batches

    def shares(self, epoch: int) -> list[list[list[int]]]:
        """Every rank's batches of an epoch. Each rank builds all of them, so the global token
        count of a step needs no collective; the last two epochs are kept (a step's batches
        may straddle an epoch boundary)."""
        if epoch not in self._shares:
            if len(self._shares) >= 2:
                del self._shares[min(self._shares)]
            self._shares[epoch] = [
                split_batches(
                    self.split,
                    self.max_tokens,
                    seed=self.seed,
                    epoch=epoch,
                    shuffle=True,
                    rank=r,
                    world_size=self.world_size,
                    length_multiple=self.length_multiple,
                )
                for r in range(self.world_size)
            ]
        return self._shares[epoch]

    def fingerprint(self, epoch: int) -> str:
        """A digest of every rank's batches of an epoch: equal exactly when a resume at a
        position in this epoch continues the batch list the saved run was walking."""
        digest = hashlib.sha256()
        for share in self.shares(epoch):
            digest.update(np.asarray([len(b) for b in share], dtype=np.int64).tobytes())
            if share:
                digest.update(np.concatenate(share).astype(np.int64).tobytes())
        return digest.hexdigest()

    def of_epoch(self, epoch: int) -> list[list[int]]:
        """This rank's batches of an epoch."""
        return self.shares(epoch)[self.rank]

    def from_position(self, epoch: int, start: int, max_epochs: int) -> Iterator[Batch]:
        """This rank's batches from batch `start` of `epoch` on, up to `max_epochs` (0: no
        limit)."""
        while max_epochs <= 0 or epoch < max_epochs:
            batches = self.of_epoch(epoch)
            for pos in range(start, len(batches)):
                yield epoch, pos + 1, batches[pos]
            epoch, start = epoch + 1, 0

    def global_tokens(self, step: list[Batch]) -> int:
        """Target tokens (+ EOS each) of a step on all ranks, from every rank's batch list on
        the host: no all_reduce and no device sync."""
        tgt_lens = self.split.tgt_lens
        return sum(
            int(tgt_lens[share[pos - 1]].sum()) + len(share[pos - 1])
            for epoch, pos, _ in step
            for share in self.shares(epoch)
            if pos <= len(share)
        )

    def steps_per_epoch(self, epoch: int, update_freq: int) -> int:
        return math.ceil(len(self.of_epoch(epoch)) / update_freq)
