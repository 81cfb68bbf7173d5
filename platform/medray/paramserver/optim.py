"""Optimisers for row-sparse updates on a parameter server: only the rows a step touched change.

Sparse Adagrad (Duchi, Hazan and Singer, JMLR 12, 2011) as ``torch.optim.Adagrad`` computes it
(``lr_decay = weight_decay = 0``): per element, ``G += g**2; w -= lr * g / (sqrt(G) + eps)``. Rows a
step did not touch have ``g = 0`` and do not move, so applying it to the touched rows only gives the
same table as the dense optimiser: the hybrid matches single-process training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medray.errors import ConfigError

__all__ = ["SparseAdagrad"]


@dataclass(frozen=True)
class SparseAdagrad:
    """Adagrad on the rows ``rows`` of ``weight`` (and its accumulator ``sum_sq``), in place."""

    lr: float = 0.05
    eps: float = 1e-10
    initial_accumulator: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.eps <= 0 or self.initial_accumulator < 0:
            raise ConfigError("Adagrad needs lr > 0, eps > 0 and initial_accumulator >= 0")

    def state(self, weight: torch.Tensor) -> torch.Tensor:
        """A fresh accumulator for ``weight``."""
        return torch.full_like(weight, self.initial_accumulator)

    def apply(self, weight: torch.Tensor, sum_sq: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """One step on the distinct ``rows`` with gradient ``grad`` [len(rows), dim]."""
        acc = sum_sq[rows].addcmul_(grad, grad)
        sum_sq[rows] = acc
        weight[rows] = weight[rows].addcdiv_(grad, acc.sqrt().add_(self.eps), value=-self.lr)
