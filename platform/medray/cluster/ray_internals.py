"""The one door to Ray's private modules (``ray._private``, ``ray.autoscaler._private``).

Every call below says why no public API of Ray 2.60 serves. Nothing else in medray, the workloads or
the tests imports a private Ray module: when Ray changes one of these, this file is the only one to
mend. Each function imports its module when called, so importing this file costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "FAKE_PROVIDER_MODULE",
    "actors",
    "available_resources_per_node",
    "drain_node",
    "draining_nodes",
    "fake_head_node_id",
    "logs_dir",
    "validate_cluster_config",
]

# The fake multi-node provider is loaded as an ``external`` provider module by this path: Ray 2.60's
# wheel lacks the ``example.yaml`` its ``fake_multinode`` provider type reads its defaults from.
FAKE_PROVIDER_MODULE = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def actors(state: str) -> dict[str, dict[str, Any]]:
    """Ray's actor table filtered by state (``PENDING_CREATION``, ``ALIVE``, …), by actor id.

    Why private: the public State API (``ray.util.state.list_actors``) goes through the dashboard's
    API server, which an in-process cluster (``ray.cluster_utils.Cluster``, ``ray start
    --include-dashboard=false``) does not run; the GCS table is the same data without it.
    """
    from ray._private.state import actors as _actors

    return _actors(actor_state_name=state)


def available_resources_per_node() -> dict[str, dict[str, float]]:
    """Free resources per node id.

    Why private: ``ray.available_resources()`` only sums the cluster, and the per-node State API
    needs the dashboard (see :func:`actors`).
    """
    from ray._private.state import available_resources_per_node as _free

    return _free()


def drain_node(node_id: str, message: str, *, deadline_s: float | None = None) -> bool:
    """Ask Ray to drain a node: no new task, actor or placement-group bundle lands there, Serve moves
    its replicas elsewhere (starting each replacement before it stops the old one), and Ray stops the
    node once it is idle. Returns whether Ray accepted (preemption drains
    always are). Ray has no undrain: the node comes back as a new node (the autoscaler's, or a
    ``ray start`` again).

    ``deadline_s``: seconds until the node is force-stopped by whoever runs it (a hint to Serve and
    Train; None: no deadline). Reason ``DRAIN_NODE_REASON_PREEMPTION``, the autoscaler's own for
    nodes that must go whether busy or not.

    Why private: the GCS ``DrainNode`` call is what Ray's autoscaler v2 and the hidden ``ray
    drain-node`` command use (``ray._raylet.GcsClient.drain_node``); Ray 2.60 has no public API for it.
    """
    import time

    import ray
    from ray._raylet import GcsClient
    from ray.core.generated import autoscaler_pb2

    deadline_ms = 0 if deadline_s is None else int((time.time() + deadline_s) * 1000)
    client = GcsClient(address=ray.get_runtime_context().gcs_address)
    reason = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
    accepted, _ = client.drain_node(node_id, reason, message, deadline_ms)
    return bool(accepted)


def draining_nodes() -> dict[str, int]:
    """Node ids Ray is draining -> the drain's deadline in ms since the epoch (0: none).

    Why private: Serve's and Ray Data's own views of draining nodes read this same GCS call
    (``ray._private.state.state.get_draining_nodes``); no public API returns it.
    """
    from ray._private.state import state

    return dict(state.get_draining_nodes())


def fake_head_node_id() -> str:
    """The node id Ray's fake multi-node provider expects its head to have.

    Why private: the fake provider (Ray's own way to run the autoscaler on one machine) exists only
    under ``ray.autoscaler._private``.
    """
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

    return FAKE_HEAD_NODE_ID


def logs_dir() -> Path:
    """This driver's Ray session log folder (where replicas' and workers' logs land).

    Why private: Ray exposes the session folder only through its node object; no public call
    returns it (``ray.init``'s result carries the address, not the paths).
    """
    from ray._private import worker

    return Path(worker._global_node.get_logs_dir_path())


def validate_cluster_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a cluster launcher config against Ray's schema and fill its defaults, as ``ray up`` does.

    Why private: ``ray up`` validates only as part of launching; the schema check and the defaults
    it applies (``prepare_config``, ``validate_config``) have no public entry point.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared
