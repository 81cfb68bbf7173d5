"""Calls to the running broker from any process: demand, watched lanes, drained nodes, the summary.

Imports nothing from :mod:`medray.scheduling`, which reads drained nodes through it.
"""

from __future__ import annotations

from typing import Any

import ray

from medray.broker.policy import Demand
from medray.errors import MedrayError

__all__ = [
    "BROKER_NAME",
    "NAMESPACE",
    "get_broker",
    "require_broker",
    "drained_nodes",
    "node_health",
    "report_demand",
    "watch_serve",
    "unwatch_serve",
    "broker_summary",
]

BROKER_NAME = "medray-broker"
NAMESPACE = "medray"


def get_broker() -> Any | None:
    """The running broker's actor handle, or None (not connected to Ray, or no broker)."""
    if not ray.is_initialized():
        return None
    try:
        return ray.get_actor(BROKER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def require_broker() -> Any:
    """The running broker's actor handle; :class:`~medray.errors.MedrayError` when none runs."""
    broker = get_broker()
    if broker is None:
        raise MedrayError("no medray broker is running: start one with medray.broker.actor.start_broker()")
    return broker


def drained_nodes(*, timeout_s: float = 5.0) -> list[str]:
    """Node ids that GPU guards have drained, as the running broker knows them (none: no broker)."""
    broker = get_broker()
    return ray.get(broker.drained_nodes.remote(), timeout=timeout_s) if broker is not None else []


def node_health(*, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """The guards' last report per node id (drained, reasons, temperatures); empty without a broker."""
    broker = get_broker()
    return ray.get(broker.node_health.remote(), timeout=timeout_s) if broker is not None else {}


def report_demand(lane: str, *, priority: str, pending: int, running: int = 0, borrowed: int = 0) -> None:
    """Push a lane's demand (for work the broker does not watch itself); repeat it at least every
    ``demand_ttl_s`` while it holds. ``borrowed``: units running on lent nodes."""
    Demand(lane=lane, priority=priority, pending=pending, running=running, borrowed=borrowed)
    ray.get(require_broker().report_demand.remote(lane, priority, pending, running, borrowed))


def watch_serve(lane: str, *, app: str, deployment: str, priority: str) -> None:
    """Have the broker read a Serve deployment's demand as lane ``lane`` of class ``priority``."""
    ray.get(require_broker().watch_serve.remote(lane, app, deployment, priority))


def unwatch_serve(lane: str) -> None:
    """Stop reading lane ``lane`` from Serve and forget its demand (no broker: nothing to do)."""
    broker = get_broker()
    if broker is not None:
        ray.get(broker.unwatch_serve.remote(lane))


def broker_summary(*, events: int = 20, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The broker's state for ``medray status``, or None when no broker runs.

    Keys: ``priorities``, ``lending``, ``runs``, ``lanes``, ``drained``, ``events`` (the last
    ``events``, oldest first).
    """
    broker = get_broker()
    if broker is None:
        return None
    return ray.get(broker.summary.remote(events), timeout=timeout_s)
