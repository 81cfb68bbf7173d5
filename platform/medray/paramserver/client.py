"""The worker's side of the parameter servers: pull the rows a batch needs, push their gradients.

Every call is split by :class:`~medray.paramserver.sharding.ShardMap` into one request per shard,
sent to all shards at once. The client counts the payload it moves (row ids and values, both ways),
which is what the hybrid saves over all-reducing the full tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medray.paramserver.sharding import ShardMap
from medray.paramserver.tables import TableSpec

__all__ = ["ParameterClient", "Traffic", "configure_servers", "gather_tables"]


@dataclass
class Traffic:
    """Payload bytes a client moved: pulled (ids out, rows back) and pushed (ids and gradients)."""

    pulled: int = 0
    pushed: int = 0

    @property
    def total(self) -> int:
        return self.pulled + self.pushed


class ParameterClient:
    """Pulls and pushes for worker ``rank`` of a run (``token`` from :func:`configure_servers`)."""

    def __init__(self, servers: Sequence[Any], tables: Sequence[TableSpec], *, token: str, rank: int) -> None:
        self.servers = list(servers)
        self.maps = {t.name: ShardMap.build(t.rows, len(self.servers)) for t in tables}
        self.dims = {t.name: t.dim for t in tables}
        self.token, self.rank = token, rank
        self.traffic = Traffic()
        self._pushes: list[Any] = []
        self._splits: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def pull(self, step: int, ids: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The rows ``ids`` (distinct global row ids per table) as of ``step``: [len(ids), dim] each."""
        import ray

        ray.get(self._pushes)  # a failed push surfaces here, not silently
        self._pushes = []
        self._splits = {name: self.maps[name].split(v.numpy()) for name, v in ids.items()}
        refs = [server.pull.remote(self.token, step, {n: split[s][1] for n, split in self._splits.items()})
                for s, server in enumerate(self.servers)]
        out = {name: torch.empty(len(v), self.dims[name]) for name, v in ids.items()}
        for s, rows in enumerate(ray.get(refs)):
            for name, values in rows.items():
                out[name][torch.from_numpy(self._splits[name][s][0])] = torch.from_numpy(np.array(values))  # Ray's are read-only
        self.traffic.pulled += sum(v.numel() * 8 + out[n].numel() * 4 for n, v in ids.items())
        return out

    def push(self, step: int, grads: Mapping[str, torch.Tensor]) -> None:
        """Send the gradients of the rows the last :meth:`pull` returned (same order), asynchronously."""
        for s, server in enumerate(self.servers):
            part = {name: (self._splits[name][s][1], g[torch.from_numpy(self._splits[name][s][0])].numpy())
                    for name, g in grads.items()}
            self.traffic.pushed += sum(i.nbytes + g.nbytes for i, g in part.values())
            self._pushes.append(server.push.remote(self.token, step, self.rank, part))

    def flush(self) -> None:
        """Wait until the pushes sent so far are applied or queued (raises if a server failed)."""
        import ray

        ray.get(self._pushes)
        self._pushes = []


def configure_servers(servers: Sequence[Any], token: str, *, world: int, start_step: int, staleness: int = 0,
                      state: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> None:
    """(Re)start every shard for a run at ``start_step``, from ``state`` (full tables) or the initial tables."""
    import ray

    ray.get([s.configure.remote(token, world=world, start_step=start_step, staleness=staleness, state=state)
             for s in servers])


def gather_tables(servers: Sequence[Any], tables: Sequence[TableSpec], token: str,
                  step: int) -> dict[str, dict[str, np.ndarray]]:
    """The full tables (weights and Adagrad accumulators) once every shard has applied ``step``."""
    import ray

    full = {t.name: {"weight": np.empty((t.rows, t.dim), np.float32), "sum_sq": np.empty((t.rows, t.dim), np.float32)}
            for t in tables}
    for part in ray.get([s.snapshot.remote(token, step) for s in servers]):
        for name, arrays in part.items():
            full[name]["weight"][arrays["rows"]] = arrays["weight"]
            full[name]["sum_sq"][arrays["rows"]] = arrays["sum_sq"]
    return full
