"""What the running cluster says about placement: nodes' free capacity, GPU temperatures, drained nodes.

Free CPU/GPU and drained nodes come from Ray (the GPU guards drain through Ray's own node
draining); temperatures from the guards' reports to the broker, read through
:mod:`medray.broker.client`. Ray is imported only when a function is called.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from medray.cluster.node_types import NODE_TYPE_LABEL
from medray.errors import PlacementError
from medray.scheduling.placement import LoadSnapshot, NodeLoad, Placement

__all__ = [
    "DRAIN_CACHE_S",
    "drained_nodes",
    "cluster_load",
    "current_node_type",
    "live_nodes",
    "require_running",
]

DRAIN_CACHE_S = 1.0

_drain_cache: tuple[float, frozenset[str]] = (float("-inf"), frozenset())


def drained_nodes() -> frozenset[str]:
    """Node ids Ray is draining right now (GPU guards drain through Ray: :mod:`medray.cluster.guard`).

    Empty when this process is not connected to Ray. Cached for :data:`DRAIN_CACHE_S` so that
    placing many tasks costs at most one GCS call a second.
    """
    global _drain_cache
    if "ray" not in sys.modules:  # a process that never imported Ray is connected to no cluster
        return frozenset()
    import ray

    if not ray.is_initialized():
        return frozenset()
    now = time.monotonic()
    if now - _drain_cache[0] < DRAIN_CACHE_S:
        return _drain_cache[1]
    from medray.cluster import ray_internals

    drained = frozenset(ray_internals.draining_nodes())
    _drain_cache = (now, drained)
    return drained


def cluster_load(*, warm_temperature_c: float = 80.0) -> LoadSnapshot:
    """A :class:`~medray.scheduling.placement.LoadSnapshot` of the connected cluster.

    Free CPU/GPU per node and drains come from Ray; GPU temperatures from the GPU guards' reports
    to the broker (none without a broker).
    """
    import ray

    from medray.broker import client
    from medray.cluster import ray_internals

    health = client.node_health()
    free = ray_internals.available_resources_per_node()
    draining = ray_internals.draining_nodes()
    nodes = []
    for n in ray.nodes():
        if not n["Alive"]:
            continue
        node_id, total, avail = n["NodeID"], n.get("Resources", {}), free.get(n["NodeID"], {})
        reported = health.get(node_id, {})
        nodes.append(NodeLoad(
            node_id=node_id,
            node_type=(n.get("Labels") or {}).get(NODE_TYPE_LABEL, ""),
            free_cpus=avail.get("CPU", 0.0),
            free_gpus=avail.get("GPU", 0.0),
            total_cpus=total.get("CPU", 0.0),
            total_gpus=total.get("GPU", 0.0),
            gpu_temperature_c=reported.get("max_temperature_c"),
            drained=node_id in draining,
        ))
    return LoadSnapshot(nodes=tuple(nodes), warm_temperature_c=warm_temperature_c)


def current_node_type() -> str:
    """The medray node type of the node this code runs on ("unknown" outside a medray cluster)."""
    import ray

    return ray.get_runtime_context().get_node_labels().get(NODE_TYPE_LABEL, "unknown")


def live_nodes(node_types: set[str] | None = None) -> list[dict[str, Any]]:
    """The alive nodes of the connected cluster (``ray.nodes()`` entries), of ``node_types`` when given."""
    import ray

    return [n for n in ray.nodes() if n["Alive"]
            and (node_types is None or (n.get("Labels") or {}).get(NODE_TYPE_LABEL) in node_types)]


def require_running(placement: Placement, *, hint: str = "start the medray cluster (`medray up --local`) "
                    "or connect to one") -> list[dict[str, Any]]:
    """The alive nodes of ``placement``'s candidate types; :class:`PlacementError` when none runs.

    ``hint``: what the message tells the user to do (the part after the colon).
    """
    names = [t.name for t in placement.candidates]
    nodes = live_nodes(set(names))
    if not nodes:
        raise PlacementError(f"no node of types {names} is running in this Ray cluster: {hint}")
    return nodes
