"""EmrRiskNet: an outcome-risk model over a patient's diagnosis-code history.

Two embedding tables, both fed from the diagnoses: ``codes`` (every full code, hashed into
``code_rows`` rows: the big, sparse table) and ``categories`` (its 3-character ICD-10-CM category,
hashed into ``category_rows`` rows: small, and dense in every batch), each mean-pooled per patient
by ``EmbeddingBag``, then a dense tower::

    codes       ids [n_codes] , offsets [B] --EmbeddingBag(code_rows, dim, mean)-->      [B, dim]
    categories  ids [n_codes] , offsets [B] --EmbeddingBag(category_rows, dim, mean)-->  [B, dim]
    concat [B, 2*dim] -> Linear(hidden) -> ReLU -> Linear(hidden) -> ReLU -> Linear(1) -> logit [B]

A table served by the parameter servers is not a module here: the worker pools the rows it pulled
(:func:`pool`) and hands them in as ``served``. Tables start from
:func:`medray.paramserver.initial_weight`, so every placement starts from the same weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medray.errors import ConfigError
from medray.paramserver import TableSpec, initial_weight

__all__ = ["TABLES", "TOWER", "EmrNetConfig", "EmrRiskNet", "pool"]

TABLES = ("codes", "categories")
TOWER = "tower"

Bags = Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # table -> (ids [n], offsets [B])


@dataclass(frozen=True)
class EmrNetConfig:
    """Table sizes, embedding width, tower width and the seed of the initial weights."""

    code_rows: int = 16_384
    category_rows: int = 1_024
    dim: int = 16
    hidden: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.code_rows, self.category_rows, self.dim, self.hidden) < 1:
            raise ConfigError("code_rows, category_rows, dim and hidden must be >= 1")

    def tables(self) -> dict[str, TableSpec]:
        rows = {"codes": self.code_rows, "categories": self.category_rows}
        return {n: TableSpec(n, rows[n], self.dim, seed=self.seed) for n in TABLES}

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def pool(weight: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Mean of each bag's rows of ``weight`` (an empty bag pools to zeros): [B, dim]."""
    return F.embedding_bag(ids, weight, offsets, mode="mean")


class EmrRiskNet(nn.Module):
    """The tables in ``local`` as EmbeddingBags plus the tower; the other tables come in pooled."""

    def __init__(self, cfg: EmrNetConfig, local: Iterable[str] = TABLES) -> None:
        super().__init__()
        specs = cfg.tables()
        self.bags = nn.ModuleDict({n: nn.EmbeddingBag.from_pretrained(initial_weight(specs[n]), freeze=False,
                                                                      mode="mean")
                                   for n in TABLES if n in set(local)})
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)  # the same tower on every worker and in single-process training
        self.tower = nn.Sequential(nn.Linear(len(TABLES) * cfg.dim, cfg.hidden), nn.ReLU(),
                                   nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))
        torch.random.set_rng_state(generator_state)

    def forward(self, bags: Bags, served: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        served = served or {}
        pooled = [served[n] if n in served else self.bags[n](*bags[n]) for n in TABLES]
        return self.tower(torch.cat(pooled, dim=1)).squeeze(1)  # [B]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Routing's groups: each local table, and the tower."""
        groups = {n: list(bag.parameters()) for n, bag in self.bags.items()}
        return {**groups, TOWER: list(self.tower.parameters())}
