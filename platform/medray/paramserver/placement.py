"""Where parameter servers go: CPU-only nodes with memory to spare, through ``medray.scheduling``.

A shard holds its rows' weights and Adagrad accumulators (2 x 4 bytes per value) plus room for a
step's pushes and a snapshot. The node types it may use are the CPU-only ones of :data:`SERVER_ROLES`
whose memory holds that several times over; :func:`~medray.scheduling.options.place` ranks them
(cheapest first, with fallbacks) and Ray's ``memory`` request keeps a node from taking more shards
than it has memory for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medray.cluster.node_types import NodeType, load_node_types
from medray.errors import PlacementError
from medray.paramserver.tables import TableSpec
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile

__all__ = ["SERVER_ROLES", "server_memory_bytes", "server_options"]

SERVER_ROLES = ("prep",)
_HEADROOM = 4  # a node type qualifies when its memory holds 4 shards' worth of this request


def server_memory_bytes(tables: Sequence[TableSpec], shards: int) -> int:
    """Memory one shard reserves: weights + accumulators + a step's traffic and a snapshot (x 2)."""
    return int(2 * 2 * sum(t.nbytes for t in tables) / shards) + (64 << 20)


def server_options(tables: Sequence[TableSpec], shards: int, *, num_cpus: float = 1.0,
                   node_types: Sequence[NodeType] | None = None) -> dict[str, Any]:
    """Ray actor options of one shard: label selector, fallbacks, CPUs and the memory it reserves."""
    memory = server_memory_bytes(tables, shards)
    types = list(node_types) if node_types is not None else load_node_types()
    roomy = [t for t in types if not t.gpus and t.role in SERVER_ROLES and t.memory_bytes >= _HEADROOM * memory]
    if not roomy:
        raise PlacementError(f"no CPU-only node type of role {'/'.join(SERVER_ROLES)} has {_HEADROOM * memory >> 20} "
                             "MiB of memory for a parameter-server shard: use more shards (--ps-shards) or add "
                             "such a node type to cluster.yaml")
    options = place(WorkloadProfile(roles=SERVER_ROLES, num_cpus=num_cpus), roomy).ray_options()
    return {**options, "memory": memory}
