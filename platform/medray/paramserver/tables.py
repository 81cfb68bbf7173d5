"""Embedding tables a parameter server holds: their shape and deterministic initial weights."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from medray.errors import ConfigError

__all__ = ["TableSpec", "initial_weight"]


@dataclass(frozen=True)
class TableSpec:
    """One embedding table: ``rows`` x ``dim`` float32, initialised from ``seed`` (N(0, init_std))."""

    name: str
    rows: int
    dim: int
    seed: int = 0
    init_std: float = 0.1

    def __post_init__(self) -> None:
        if not self.name or self.rows < 1 or self.dim < 1 or self.init_std < 0:
            raise ConfigError(f"table {self.name!r}: needs a name, rows >= 1, dim >= 1 and init_std >= 0")

    @property
    def nbytes(self) -> int:
        return self.rows * self.dim * 4


def initial_weight(spec: TableSpec) -> torch.Tensor:
    """The table's initial weights; the same on every server and in the single-process model."""
    generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + zlib.crc32(spec.name.encode()))
    return torch.randn(spec.rows, spec.dim, generator=generator) * spec.init_std
