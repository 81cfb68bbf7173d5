"""Node-type autoscaling from ``cluster.yaml``, and Ray's fake multi-node provider to show it on one machine.

The autoscaler launches the node type whose labels and resources satisfy pending work, so the label
selectors that :mod:`medray.scheduling` emits are also what scales the fleet: a pending replica asking
for ``medray.io/node-type=infer-t4`` starts an ``infer-t4`` node, never a ``train-a100`` one. This needs
Ray's autoscaler v2 (label-aware scheduling of pending demand).

:func:`fake_autoscaling_cluster` runs that autoscaler on this machine with cluster.yaml's node types
scaled down as in :mod:`medray.cluster.local`. Unlike ``ray.cluster_utils.AutoscalingCluster`` it never
runs ``ray stop`` (which would stop every Ray process of the user, other clusters included), and it
does not need the ``example.yaml`` that Ray 2.60's wheel does not ship (that file is the fake
provider's defaults; without it the provider type ``fake_multinode`` fails, so the provider is loaded
as an ``external`` module instead).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medray.cluster import ray_internals
from medray.cluster.local import LocalNodeSpec, local_node_specs
from medray.cluster.local_serve import free_port
from medray.cluster.node_types import NodeType, load_node_types

__all__ = [
    "FAKE_HEAD_NODE_TYPE",
    "fake_provider_node_types",
    "fake_provider_config",
    "FakeAutoscalingCluster",
    "fake_autoscaling_cluster",
]

FAKE_HEAD_NODE_TYPE = "ray.head.default"  # the name Ray's fake provider gives its head


def _resources(spec: LocalNodeSpec) -> dict[str, float]:
    resources: dict[str, float] = {"CPU": spec.num_cpus, **spec.resources}
    if spec.num_gpus:
        resources["GPU"] = spec.num_gpus
    if spec.object_store_memory:
        resources["object_store_memory"] = spec.object_store_memory
    return resources


def fake_provider_node_types(
    node_types: Sequence[NodeType] | None = None,
    *,
    min_workers: int | None = None,
    max_workers: int | None = None,
    **scale: Any,
) -> dict[str, dict[str, Any]]:
    """cluster.yaml's worker node types as the fake provider's ``available_node_types``.

    Resources and labels are those of the embedded local cluster (``scale`` goes to
    :func:`medray.cluster.local.local_node_specs`); ``min_workers`` / ``max_workers`` default to each
    type's own and, when given, override every type's (``max_workers`` only lowers a type's own).
    """
    specs = local_node_specs(node_types, **scale)
    return {
        spec.node_type.name: {
            "resources": _resources(spec),
            "labels": dict(spec.labels),
            "node_config": {},
            "min_workers": spec.node_type.min_workers if min_workers is None else min_workers,
            "max_workers": (spec.node_type.max_workers if max_workers is None
                            else min(max_workers, spec.node_type.max_workers)),
        }
        for spec in specs
        if not spec.is_head
    }


def fake_provider_config(
    node_types: Sequence[NodeType] | None = None,
    *,
    gcs_address: str,
    idle_timeout_s: float = 5.0,
    min_workers: int | None = None,
    max_workers: int | None = None,
    **scale: Any,
) -> dict[str, Any]:
    """A complete autoscaler config (fake provider) for the cluster whose GCS is at ``gcs_address``."""
    types = list(node_types) if node_types is not None else load_node_types()
    head = local_node_specs(types, **scale)[0]
    available = fake_provider_node_types(types, min_workers=min_workers, max_workers=max_workers,
                                         **scale)
    available[FAKE_HEAD_NODE_TYPE] = {
        "resources": _resources(head), "labels": dict(head.labels), "node_config": {}, "max_workers": 0,
    }
    return {
        "cluster_name": "medray-fake",
        "max_workers": sum(t["max_workers"] for t in available.values()),
        "provider": {
            "type": "external",
            "module": ray_internals.FAKE_PROVIDER_MODULE,
            "gcs_address": gcs_address,
            "head_node_id": ray_internals.fake_head_node_id(),
            "launch_multiple": True,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": available,
        "head_node_type": FAKE_HEAD_NODE_TYPE,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "upscaling_speed": 1.0,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class FakeAutoscalingCluster:
    """A running fake autoscaling cluster: its address and the config its autoscaler follows."""

    address: str
    config: dict[str, Any]
    _cluster: Any


@contextmanager
def fake_autoscaling_cluster(
    config: str | Path | None = None,
    *,
    idle_timeout_s: float = 5.0,
    min_workers: int | None = 0,
    max_workers: int | None = 1,
    connect: bool = True,
    **scale: Any,
) -> Iterator[FakeAutoscalingCluster]:
    """Start a head whose autoscaler (v2) launches cluster.yaml's node types on demand; stop it on exit.

    Only the head runs at first (``min_workers=0``); the autoscaler adds worker nodes, as raylets on
    this machine, when work is pending and removes them after ``idle_timeout_s`` idle. The autoscaler
    settings are environment variables read by the head's processes, so run this in a process of its
    own, not one connected to another cluster.
    """
    import ray
    from ray.cluster_utils import Cluster

    types = load_node_types(config)
    head = local_node_specs(types, **scale)[0]
    port = free_port()
    head_id = ray_internals.fake_head_node_id()
    autoscaler_config = fake_provider_config(
        types, gcs_address=f"{ray.util.get_node_ip_address()}:{port}", idle_timeout_s=idle_timeout_s,
        min_workers=min_workers, max_workers=max_workers, **scale,
    )
    env = {
        "RAY_FAKE_CLUSTER": "1",
        "RAY_enable_autoscaler_v2": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        # The provider knows the head by this fixed id; launched nodes get ids of the same form.
        "RAY_CLOUD_INSTANCE_ID": head_id,
        "RAY_OVERRIDE_NODE_ID_FOR_TESTING": head_id,
        # Launched raylets are the autoscaler's children: if the head goes first, they follow soon.
        "RAY_gcs_rpc_server_reconnect_timeout_s": "5",
    }
    saved = {k: os.environ.get(k) for k in env}
    with tempfile.TemporaryDirectory(prefix="medray-autoscaling-") as tmp:
        config_path = Path(tmp) / "autoscaler.json"
        config_path.write_text(json.dumps(autoscaler_config))
        os.environ.update(env)
        try:
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": head.num_cpus,
                    "resources": head.resources,
                    "labels": head.labels,
                    "object_store_memory": head.object_store_memory,
                    "gcs_server_port": port,
                    "autoscaling_config": str(config_path),
                    "include_dashboard": False,
                },
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        session_dir = cluster.head_node.get_session_dir_path()
        try:
            if connect:
                ray.init(address=cluster.address, logging_level="ERROR")
            yield FakeAutoscalingCluster(address=cluster.address, config=autoscaler_config,
                                         _cluster=cluster)
        finally:
            ray.shutdown()
            cluster.shutdown()
            _stop_leftovers(session_dir)


def _stop_leftovers(session_dir: str) -> None:
    """Stop what the fake provider leaves behind of this cluster (the log monitors of the nodes it
    launched outlive them), by pid: only processes naming this cluster's own session directory."""
    import psutil

    leftovers = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] != os.getpid() and session_dir in " ".join(proc.info["cmdline"] or ()):
            leftovers.append(proc)
    for proc in leftovers:
        proc.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=5)
    for proc in alive:
        proc.kill()
