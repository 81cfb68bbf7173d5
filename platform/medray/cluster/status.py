"""What ``medray status`` shows: every node with its role, site, storage, accelerator and GPU health
(as rows; :func:`medray.cli.status.format_nodes` prints them)."""

from __future__ import annotations

from typing import Any

from medray.cluster.node_types import (
    ACCELERATOR_LABEL,
    NODE_TYPE_LABEL,
    ROLE_LABEL,
    ROLES,
    SIMULATED_GPU_LABEL,
    SITE_LABEL,
    STORAGE_LABEL,
)
from medray.cluster.nvml import GpuReading, health_summary, read_gpus

__all__ = ["node_rows"]

_NODE_ID_LABEL = "ray.io/node-id"


def _gpu_readings_on_node() -> list[dict[str, Any]]:
    return [r.to_dict() for r in read_gpus()]


def node_rows(*, gpu_timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """One dict per node of the connected Ray cluster (``ray.init`` first), by role then type.

    Keys: node_id, node_type, role, site, storage, accelerator, alive, resources, gpus, gpu_health,
    drained (the GPU guard stopped new work there; see medray.cluster.guard).
    GPU readings come from NVML on each node itself, through a zero-CPU task pinned to that node.
    """
    import ray

    from medray.cluster import ray_internals

    probe = ray.remote(num_cpus=0, max_retries=0)(_gpu_readings_on_node)
    nodes = ray.nodes()
    draining = ray_internals.draining_nodes()
    # A draining node takes no new task, the probe included: its row says drained instead.
    pending = {
        n["NodeID"]: probe.options(label_selector={_NODE_ID_LABEL: n["NodeID"]}).remote()
        for n in nodes
        if n["Alive"] and n["NodeID"] not in draining
    }
    readings: dict[str, list[dict[str, Any]] | None] = {}
    ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=gpu_timeout_s)
    ready_set = set(ready)
    for node_id, ref in pending.items():
        readings[node_id] = ray.get(ref) if ref in ready_set else None
        if ref not in ready_set:
            ray.cancel(ref, force=True)

    from medray.broker.client import get_broker

    broker = get_broker()
    drains = ray.get(broker.node_health.remote(), timeout=gpu_timeout_s) if broker else {}

    rows = []
    for n in nodes:
        labels = n.get("Labels", {}) or {}
        gpus = readings.get(n["NodeID"])
        if not n["Alive"]:
            health = "node dead"
        elif n["NodeID"] in draining:
            health = "draining (takes no new work; leaves once idle)"
        elif gpus is None:
            health = "unknown (node did not answer)"
        elif not gpus and labels.get(SIMULATED_GPU_LABEL) == "true":
            health = "simulated GPU (no device)"
        else:
            health = health_summary([GpuReading(**g) for g in gpus])
        drain = drains.get(n["NodeID"]) or {}
        if drain.get("drained"):
            health = f"DRAINED ({', '.join(drain['reasons'])}); {health}"
        rows.append(
            {
                "node_id": n["NodeID"],
                "node_type": labels.get(NODE_TYPE_LABEL),
                "role": labels.get(ROLE_LABEL),
                "site": labels.get(SITE_LABEL),
                "storage": labels.get(STORAGE_LABEL),
                "accelerator": labels.get(ACCELERATOR_LABEL),
                "alive": bool(n["Alive"]),
                "resources": {
                    k: v for k, v in n.get("Resources", {}).items() if not k.startswith("node:")
                },
                "address": n.get("NodeManagerAddress"),
                "gpus": gpus or [],
                "gpu_health": health,
                "drained": bool(drain.get("drained")) or n["NodeID"] in draining,
            }
        )
    role_order = {r: i for i, r in enumerate(ROLES)}
    rows.sort(key=lambda r: (role_order.get(r["role"], len(ROLES)), r["node_type"] or "", r["node_id"]))
    return rows

