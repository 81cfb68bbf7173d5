"""The parameter-server actor: one hash shard of every served table, updated by sparse pushes.

Steps are numbered from the run's start. A worker pulls the rows of step ``t``'s batch, trains,
and pushes the gradients of those rows for step ``t``. Bounded staleness ``s`` (Ho et al., "More
effective distributed ML via a stale synchronous parallel parameter server", NeurIPS 2013):

* ``s = 0`` (synchronous, the default): a shard sums the pushes of all ``world`` workers for step
  ``t`` and applies their mean once (as DDP averages), and a pull for step ``t`` waits until step
  ``t - 1`` is applied, so every worker sees exactly the table of single-process training;
* ``s > 0`` (asynchronous): each push is applied when it arrives (scaled by ``1/world``), and a
  pull for step ``t`` waits only until every worker has pushed step ``t - 1 - s``.

A run's rank 0 calls :meth:`ShardServer.configure` at every (re)start with a fresh token and,
when resuming, the checkpoint's tables. A server that Ray restarted after a crash has no token
and refuses pulls and pushes (:class:`~medray.errors.ParameterServerError`), so the workers fail
and Ray Train restarts them from the last checkpoint, which restores every shard to one step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from medray.errors import ParameterServerError
from medray.paramserver.optim import SparseAdagrad
from medray.paramserver.sharding import ShardMap
from medray.paramserver.tables import TableSpec, initial_weight

__all__ = ["ShardServer"]

# Arrays over Ray: per table, (local row ids int64 [n], values float32 [n, dim]).
Rows = Mapping[str, np.ndarray]
Grads = Mapping[str, tuple[np.ndarray, np.ndarray]]


class ShardServer:
    """Shard ``shard`` of ``shards`` of each table, with its Adagrad state (an async Ray actor)."""

    def __init__(self, shard: int, shards: int, tables: Sequence[TableSpec], optimizer: SparseAdagrad) -> None:
        self.shard = shard
        self.tables = {t.name: t for t in tables}
        self.rows = {t.name: torch.from_numpy(ShardMap.build(t.rows, shards).rows_of(shard)) for t in tables}
        self.optimizer = optimizer
        self.token: str | None = None
        self.world = 1
        self.staleness = 0
        self.applied = -1
        self.done: list[int] = []
        self.pending: dict[int, list[Grads]] = {}
        self.changed = asyncio.Condition()
        self.bytes_in = self.bytes_out = 0
        self._reset(None)

    def _reset(self, state: Mapping[str, Mapping[str, np.ndarray]] | None) -> None:
        self.weight: dict[str, torch.Tensor] = {}
        self.sum_sq: dict[str, torch.Tensor] = {}
        for name, spec in self.tables.items():
            mine = self.rows[name]
            if state is None:
                self.weight[name] = initial_weight(spec)[mine].contiguous()
                self.sum_sq[name] = self.optimizer.state(self.weight[name])
            else:
                self.weight[name] = torch.from_numpy(np.ascontiguousarray(state[name]["weight"][mine.numpy()]))
                self.sum_sq[name] = torch.from_numpy(np.ascontiguousarray(state[name]["sum_sq"][mine.numpy()]))

    async def configure(self, token: str, *, world: int, start_step: int, staleness: int = 0,
                        state: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> None:
        """Start (or restart) a run at ``start_step``: initial tables, or the full tables of ``state``."""
        if world < 1 or staleness < 0:
            raise ParameterServerError(f"world must be >= 1 and staleness >= 0, got {world} and {staleness}")
        self._reset(state)
        self.token, self.world, self.staleness = token, world, staleness
        self.applied = start_step - 1
        self.done = [start_step - 1] * world
        self.pending = {}
        async with self.changed:
            self.changed.notify_all()

    def _check(self, token: str) -> None:
        if token != self.token:
            raise ParameterServerError(
                f"parameter server shard {self.shard} is not configured for this run (it was restarted); "
                "the run resumes from its last checkpoint")

    async def pull(self, token: str, step: int, ids: Rows) -> Rows:
        """The current rows ``ids`` (local indices) of each table, once step ``step - 1 - staleness`` is applied."""
        self._check(token)
        async with self.changed:
            await self.changed.wait_for(lambda: self.applied >= step - 1 - self.staleness or token != self.token)
        self._check(token)
        out = {name: self.weight[name][torch.from_numpy(local)].numpy() for name, local in ids.items()}
        self.bytes_in += sum(v.nbytes for v in ids.values())
        self.bytes_out += sum(v.nbytes for v in out.values())
        return out

    async def push(self, token: str, step: int, rank: int, grads: Grads) -> None:
        """The gradients of worker ``rank`` for the rows it pulled at ``step``."""
        self._check(token)
        self.bytes_in += sum(i.nbytes + g.nbytes for i, g in grads.values())
        if self.staleness == 0:
            arrived = self.pending.setdefault(step, [])
            arrived.append(grads)
            if len(arrived) < self.world:
                return
            del self.pending[step]
            self._apply(arrived)
            self.applied = step
        else:
            self._apply([grads])
            self.done[rank] = max(self.done[rank], step)
            self.applied = min(self.done)
        async with self.changed:
            self.changed.notify_all()

    def _apply(self, pushes: list[Grads]) -> None:
        for name in self.tables:
            parts = [p[name] for p in pushes if name in p and len(p[name][0])]
            if not parts:
                continue
            ids = torch.from_numpy(np.concatenate([i for i, _ in parts]))
            grads = torch.from_numpy(np.concatenate([g for _, g in parts]))
            rows, inverse = torch.unique(ids, return_inverse=True)
            total = torch.zeros(len(rows), grads.shape[1]).index_add_(0, inverse, grads)
            self.optimizer.apply(self.weight[name], self.sum_sq[name], rows, total / self.world)

    async def snapshot(self, token: str, step: int) -> dict[str, dict[str, np.ndarray]]:
        """Per table, this shard's global row ids, weights and accumulators once ``step`` is applied."""
        self._check(token)
        async with self.changed:
            await self.changed.wait_for(lambda: self.applied >= step or token != self.token)
        self._check(token)
        return {name: {"rows": self.rows[name].numpy(), "weight": self.weight[name].numpy().copy(),
                       "sum_sq": self.sum_sq[name].numpy().copy()} for name in self.tables}

    def applied_step(self) -> int:
        """The last step whose updates are applied (-1 before any, or when not configured)."""
        return self.applied if self.token is not None else -1

    def traffic(self) -> dict[str, int]:
        """Payload bytes received and sent since the actor started."""
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out}
