"""Training rows resident in one tensor on a device: epochs are seeded permutations of it.

A worker (a Ray Train rank, a federated site) pulls its labelled volumes once and slices a new
permutation every epoch, with no input pipeline between batches. The order is a function of
(seed, epoch, rank) alone, so a run resumed mid-epoch draws the same order and skips what it took.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from medray.data.shards import VOLUME
from medray.errors import ConfigError

__all__ = ["LABEL", "epoch_permutation", "ResidentSet"]

LABEL = "label"


def epoch_permutation(n: int, *, seed: int, epoch: int, rank: int = 0) -> torch.Tensor:
    """The order of a resident set's ``n`` rows in ``epoch`` on ``rank``: a function of these alone,
    so a run resumed mid-epoch draws the same order again and can skip the batches already taken."""
    key = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(key >> 1))


@dataclass(frozen=True)
class ResidentSet:
    """A worker's training rows held in one tensor on its device: epochs are permuted slices of it,
    with no input pipeline between batches (``volume`` may be stored as float16; batches are float32)."""

    volume: torch.Tensor  # (N, D, H, W)
    label: torch.Tensor  # (N,) float32

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def head(self, rows: int) -> ResidentSet:
        """The first ``rows`` rows (DDP ranks train on equally many)."""
        return ResidentSet(self.volume[:rows], self.label[:rows])

    def steps(self, batch_size: int, *, drop_last: bool = True) -> int:
        """Batches per epoch."""
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batches(self, batch_size: int, *, seed: int, epoch: int, rank: int = 0, drop_last: bool = True,
                skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """``{VOLUME, LABEL}`` batches of ``epoch``'s permutation, from batch ``skip`` on."""
        if batch_size < 1 or skip < 0:
            raise ConfigError(f"batch_size must be >= 1 and skip >= 0, got {batch_size} and {skip}")
        order = epoch_permutation(len(self), seed=seed, epoch=epoch, rank=rank).to(self.label.device)
        stop = self.steps(batch_size, drop_last=drop_last) * batch_size
        for start in range(skip * batch_size, stop, batch_size):
            rows = order[start:start + batch_size]
            yield {VOLUME: self.volume.index_select(0, rows).float(), LABEL: self.label.index_select(0, rows)}
