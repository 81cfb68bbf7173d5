"""Calls to the running broker from any process: demand, watched lanes, drained nodes, the summary.

Imports nothing from :mod:`medray.scheduling`, which reads the guards' temperatures through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from medray.broker.lanes import InFlight
from medray.broker.policy import Demand
from medray.cluster.periodic import keep_running
from medray.errors import MedrayError
from medray.logs import get_logger

__all__ = [
    "BROKER_NAME",
    "NAMESPACE",
    "get_broker",
    "require_broker",
    "node_health",
    "report_demand",
    "report_queues",
    "asked_to_step_down",
    "watch_serve",
    "unwatch_serve",
    "broker_summary",
]

BROKER_NAME = "medray-broker"
NAMESPACE = "medray"

_log = get_logger("medray.broker")


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


def node_health(*, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """The guards' last report per node id (drained, reasons, temperatures); empty without a broker."""
    broker = get_broker()
    return ray.get(broker.node_health.remote(), timeout=timeout_s) if broker is not None else {}


def report_demand(lane: str, *, priority: str, pending: int, running: int = 0, borrowed: int = 0,
                  queued: int = 0, oldest_s: float = 0.0) -> None:
    """Push a lane's demand (for work the broker does not watch itself); repeat it at least every
    ``demand_ttl_s`` while it holds. ``borrowed``: units running on lent nodes; ``queued`` and
    ``oldest_s``: requests waiting and the oldest one's wait (lending needs both, see BrokerPolicy)."""
    Demand(lane=lane, priority=priority, pending=pending, running=running, borrowed=borrowed,
           queued=queued, oldest_s=oldest_s)
    ray.get(require_broker().report_demand.remote(lane, priority, pending, running, borrowed, queued,
                                                   oldest_s))


class _BrokerLookup:
    """The broker's handle for callers that ask it often: looked up at most every ``lookup_s``
    while none runs, forgotten when a call to it fails (it may have been restarted)."""

    def __init__(self, lookup_s: float = 5.0) -> None:
        self._lookup_s, self._handle, self._looked_up = lookup_s, None, float("-inf")

    def get(self) -> Any | None:
        now = time.monotonic()
        if self._handle is None and now - self._looked_up >= self._lookup_s:
            self._handle, self._looked_up = get_broker(), now
        return self._handle

    def forget(self) -> None:
        self._handle = None


def report_queues(queues: Mapping[str, InFlight], *, source: str, interval_s: float = 0.5,
                  lookup_s: float = 5.0) -> asyncio.Task[None]:
    """Start the task (in a front door's event loop) that every ``interval_s`` tells the running
    broker each watched lane's queue, ``lane name -> InFlight``, as front door ``source`` holds it.

    Never waits on the broker; without one it looks again every ``lookup_s``. Keep the task referenced.
    """
    lookup = _BrokerLookup(lookup_s)

    def report() -> None:
        broker = lookup.get()
        if broker is None:
            return
        now = time.monotonic()
        try:
            for lane, inflight in queues.items():
                broker.report_queue.remote(lane, source, *inflight.snapshot(now))
        except ray.exceptions.RayError:
            lookup.forget()  # gone: look it up again

    return keep_running(None, report, interval_s, log=_log, what="lane queue report")


def watch_serve(lane: str, *, app: str, deployment: str, priority: str, node_types: Sequence[str] = (),
                unit: Mapping[str, float] | None = None) -> None:
    """Have the broker read a Serve deployment's demand as lane ``lane`` of class ``priority``.

    ``node_types`` (the types its placement allows) and ``unit`` (one replica's resources, e.g.
    ``{"GPU": 0.5, "CPU": 0.5}``) let the broker see when the lane's own nodes have room for the
    replicas it runs on lent ones, and ask those to step down (:func:`asked_to_step_down`).
    """
    ray.get(require_broker().watch_serve.remote(lane, app, deployment, priority, tuple(node_types),
                                                dict(unit or {})))


async def asked_to_step_down(lane: str, *, timeout_s: float = 2.0) -> bool:
    """Whether the running broker asks this process's unit of ``lane`` to stop now: it runs on a
    lent node and the lane's own nodes have room for it. False without a broker, or when it does
    not answer within ``timeout_s``. Call it from a Serve replica's ``check_health``: raising there
    makes Serve stop the replica gracefully and place a new one (on the lane's own nodes)."""
    broker = _step_down_lookup.get()
    if broker is None:
        return False
    node_id = ray.get_runtime_context().get_node_id()
    try:
        return bool(await asyncio.wait_for(broker.step_down.remote(lane, node_id), timeout_s))
    except (asyncio.TimeoutError, ray.exceptions.RayError):
        _step_down_lookup.forget()  # gone or stuck: look it up again
        return False


_step_down_lookup = _BrokerLookup()


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
