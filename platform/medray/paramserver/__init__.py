"""Parameter servers for sparse embedding tables, beside AllReduce for the dense layers.

:mod:`~medray.paramserver.tables` (table shapes, initial weights), :mod:`~medray.paramserver.sharding`
(rows to shards by hash), :mod:`~medray.paramserver.optim` (sparse Adagrad),
:mod:`~medray.paramserver.server` (the shard actor, bounded staleness, snapshots),
:mod:`~medray.paramserver.client` (pull / push from a worker, bytes counted),
:mod:`~medray.paramserver.placement` (CPU nodes with memory to spare) and
:mod:`~medray.paramserver.routing` (parameter server or AllReduce, by measured update density).
:func:`start_servers` starts the shards of a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medray.paramserver.client import ParameterClient, Traffic, configure_servers, gather_tables
from medray.paramserver.optim import SparseAdagrad
from medray.paramserver.routing import Routing, measure_densities, parse_pins, route
from medray.paramserver.sharding import ShardMap, shard_of
from medray.paramserver.tables import TableSpec, initial_weight

__all__ = ["ParameterClient", "Routing", "ShardMap", "SparseAdagrad", "TableSpec", "Traffic", "configure_servers",
           "gather_tables", "initial_weight", "measure_densities", "parse_pins", "route", "shard_of",
           "start_servers"]


def start_servers(tables: Sequence[TableSpec], shards: int, optimizer: SparseAdagrad, *, name: str,
                  num_cpus: float = 1.0, max_restarts: int = 3) -> list[Any]:
    """Start ``shards`` named actors ``{name}-{i}`` placed by :func:`~medray.paramserver.placement.server_options`.

    Ray restarts a crashed shard up to ``max_restarts`` times (empty: the run restores it from its
    checkpoint). Waits until every shard is up.
    """
    import ray

    from medray.paramserver.placement import server_options
    from medray.paramserver.server import ShardServer

    options = server_options(tables, shards, num_cpus=num_cpus)
    actor = ray.remote(ShardServer)
    servers = [actor.options(**options, name=f"{name}-{i}", max_restarts=max_restarts).remote(i, shards, list(tables),
                                                                                             optimizer)
               for i in range(shards)]
    ray.get([s.applied_step.remote() for s in servers])
    return servers
