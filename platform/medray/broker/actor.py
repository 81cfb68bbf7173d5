"""The broker actor: it observes the cluster, asks :class:`~medray.broker.policy.BrokerCore` what to do,
and starts, asks to yield, resumes and stops the runs it was given (see :mod:`medray.broker`).

The broker is a named, detached actor (``medray-broker`` in namespace ``medray``) on the head node.
Runs are its tasks, so they share its fate: stopping the broker stops its runs.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray

from medray import metrics
from medray.broker.client import BROKER_NAME, NAMESPACE, get_broker, require_broker
from medray.broker.policy import RUN_STATES, BrokerCore, BrokerPolicy, Demand, Event, RunRecord, priority_rank
from medray.broker.preemption import _polls
from medray.cluster import ray_internals
from medray.cluster.node_types import NODE_TYPE_LABEL, ROLE_LABEL
from medray.cluster.periodic import keep_running
from medray.errors import ConfigError
from medray.logs import get_logger
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile

__all__ = ["Broker", "DRIVER_PROFILE", "serve_replicas", "start_broker", "stop_broker", "stop_run", "submit_run"]

# Where a run's own task goes when the caller names no profile: the driver of a Train/Tune run
# mostly waits, and its workers take their GPUs through their own placement.
DRIVER_PROFILE = WorkloadProfile(roles=("coordinator", "prep"), num_cpus=0)

_log = get_logger("medray.broker")


def _run_entrypoint(entrypoint: str, config: dict[str, Any], run_id: str, resume_from: str | None,
                    workers: int | None = None) -> Any:
    module, _, name = entrypoint.partition(":")
    fn = getattr(importlib.import_module(module), name)
    # Ray reuses worker processes: the answer "yield" cached for an earlier attempt of this run in
    # this process must not make the resumed attempt stop at its first step.
    _polls.pop(run_id, None)
    try:
        if workers:
            return fn(config, run_id=run_id, resume_from=resume_from, workers=workers)
        return fn(config, run_id=run_id, resume_from=resume_from)
    finally:
        _polls.pop(run_id, None)


_run_task = ray.remote(_run_entrypoint)


def serve_replicas(app: str, deployment: str) -> tuple[int, list[str]]:
    """(replicas Ray cannot place, node ids of the placed ones) of a Serve deployment.

    From Ray's actor table (replica actors are named ``SERVE_REPLICA::<app>#<deployment>#<id>``).
    An actor stays ``PENDING_CREATION`` until its constructor returned, also once placed: only
    those without a worker process yet are waiting for resources. Placed ones count where they
    run, starting or alive.
    """
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    pending, placed = 0, []
    for state in ("PENDING_CREATION", "ALIVE"):
        for a in ray_internals.actors(state).values():
            if not a["Name"].startswith(prefix):
                continue
            if a["Pid"]:
                placed.append(a["Address"]["NodeID"])
            else:
                pending += 1
    return pending, placed


@dataclass(frozen=True)
class _Watch:
    """A Serve deployment the broker reads as a lane: its priority class, the node types its
    placement allows (cheapest first) and what one replica takes (``{"GPU": 0.5, "CPU": 0.5}``)."""

    app: str
    deployment: str
    priority: str
    node_types: tuple[str, ...] = ()
    unit: dict[str, float] = field(default_factory=dict)


def _export_event(e: Event) -> None:
    _log.info(f"{e.action} {e.subject}: {e.reason}",
              extra={"broker_action": e.action, "subject": e.subject, "reason": e.reason})
    metrics.counter("broker_events_total", "priority broker decisions and observations",
                    ("action",)).inc(tags={"action": e.action})


@ray.remote(num_cpus=0, max_restarts=0)
class Broker:
    """The broker actor (start with :func:`start_broker`); see the module docstring."""

    def __init__(self, policy: BrokerPolicy) -> None:
        self._core = BrokerCore(policy, on_event=_export_event)
        self._tasks: dict[str, Any] = {}
        self._watches: dict[str, _Watch] = {}
        self._queues: dict[str, dict[str, tuple[int, float, float]]] = {}  # lane -> source -> (n, oldest, at)
        self._nodes: dict[str, tuple[str, str]] = {}  # node id -> (role, node type)
        self._loop: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Start the decision loop (idempotent)."""
        self._loop = keep_running(self._loop, self._step, self._core.policy.interval_s, log=_log,
                                  what="broker step")

    def _step(self) -> None:
        now = time.time()
        self._collect_ended(now)
        self._poll_watches(now)
        for decision in self._core.tick(now):
            if decision.action == "resume":
                self._start(self._core.runs[decision.run_id])
        self._export_gauges()

    def _collect_ended(self, now: float) -> None:
        if not self._tasks:
            return
        ready, _ = ray.wait(list(self._tasks.values()), num_returns=len(self._tasks), timeout=0)
        for run_id, ref in list(self._tasks.items()):
            if ref not in ready:
                continue
            del self._tasks[run_id]
            try:
                ray.get(ref)
                error = None
            except Exception as e:  # the type only: a message could carry data from the run
                error = type(getattr(e, "cause", None) or e).__name__
            for decision in self._core.run_ended(now, run_id, error):  # a resized run starts again
                self._start(self._core.runs[decision.run_id])

    def _poll_watches(self, now: float) -> None:
        lend_roles = self._core.policy.lend_roles
        for lane, watch in self._watches.items():
            pending, nodes = serve_replicas(watch.app, watch.deployment)
            if any(n not in self._nodes for n in nodes):
                self._nodes = {n["NodeID"]: ((n.get("Labels") or {}).get(ROLE_LABEL, ""),
                                             (n.get("Labels") or {}).get(NODE_TYPE_LABEL, ""))
                               for n in ray.nodes() if n["Alive"]}
            borrowed = sum(self._nodes.get(n, ("", ""))[0] in lend_roles for n in nodes)
            queued, oldest = self._queue(lane, now)
            self._core.report_demand(Demand(lane=lane, priority=watch.priority, pending=pending,
                                            running=len(nodes), borrowed=borrowed, queued=queued,
                                            oldest_s=oldest, at=now, source="serve",
                                            room=self._room(watch) if borrowed else 0))

    def _room(self, watch: _Watch) -> int:
        """Units of ``watch`` that its own (not lent, not draining) node types could take now."""
        if not watch.unit or not watch.node_types:
            return 0
        draining = ray_internals.draining_nodes()
        room = 0
        for node_id, free in ray_internals.available_resources_per_node().items():
            role, node_type = self._nodes.get(node_id, ("", ""))
            if node_type in watch.node_types and role not in self._core.policy.lend_roles \
                    and node_id not in draining:
                room += int(min(free.get(r, 0.0) / amount for r, amount in watch.unit.items() if amount > 0))
        return room

    def _queue(self, lane: str, now: float) -> tuple[int, float]:
        """Requests queued in ``lane`` and the oldest one's wait, summed over its fresh reporters."""
        reports = self._queues.get(lane, {})
        for source in [s for s, (_, _, at) in reports.items() if now - at > self._core.policy.demand_ttl_s]:
            del reports[source]  # a front door that stopped reporting (a replica gone)
        return (sum(n for n, _, _ in reports.values()),
                max((oldest for _, oldest, _ in reports.values()), default=0.0))

    def _export_gauges(self) -> None:
        runs = metrics.gauge("broker_runs", "runs known to the broker by state", ("state",))
        for state in RUN_STATES:
            runs.set(float(sum(r.state == state for r in self._core.runs.values())),
                     tags={"state": state})
        pending = metrics.gauge("broker_lane_pending", "units a lane waits to place", ("lane",))
        borrowed = metrics.gauge("broker_lane_borrowed", "units a lane runs on lent nodes", ("lane",))
        for d in self._core.demands.values():
            pending.set(float(d.pending), tags={"lane": d.lane})
            borrowed.set(float(d.borrowed), tags={"lane": d.lane})

    def _start(self, run: RunRecord) -> None:
        opts = place(run.profile).ray_options()
        self._tasks[run.run_id] = _run_task.options(max_retries=0, **opts).remote(
            run.entrypoint, run.config, run.run_id, run.checkpoint_path, run.workers or None)

    # Runs -----------------------------------------------------------------------------------

    async def submit_run(self, run_id: str, entrypoint: str, config: dict[str, Any], priority: str,
                         profile: WorkloadProfile, workers: tuple[int, int] | None = None) -> None:
        low, high = workers or (1, 0)
        record = RunRecord(run_id=run_id, priority=priority, entrypoint=entrypoint, config=config,
                           profile=profile, submitted_at=time.time(), workers=high, min_workers=low,
                           max_workers=high)
        self._core.add_run(record)
        self._start(record)

    async def should_yield(self, run_id: str) -> bool:
        return self._core.should_yield(run_id)

    async def stop_runs(self, run_ids: list[str] | None = None) -> list[str]:
        """Ask runs (all when None) to stop for good; returns those whose tasks still have to end."""
        now = time.time()
        return [run_id for run_id in (run_ids if run_ids is not None else list(self._core.runs))
                if self._core.stop_run(now, run_id)]

    async def active_runs(self, run_ids: list[str]) -> list[str]:
        """Those of ``run_ids`` whose tasks have not ended yet."""
        return [run_id for run_id in run_ids if run_id in self._tasks]

    async def report_checkpoint(self, run_id: str, step: int, path: str | None) -> None:
        self._core.report_checkpoint(run_id, step, path)

    # Demand and nodes -----------------------------------------------------------------------

    async def report_demand(self, lane: str, priority: str, pending: int, running: int,
                            borrowed: int, queued: int = 0, oldest_s: float = 0.0) -> None:
        self._core.report_demand(Demand(lane=lane, priority=priority, pending=pending, running=running,
                                        borrowed=borrowed, queued=queued, oldest_s=oldest_s,
                                        at=time.time()))

    async def report_queue(self, lane: str, source: str, queued: int, oldest_s: float) -> None:
        """A watched lane's queue as one of its front doors (an ingress replica ``source``) sees it."""
        self._queues.setdefault(lane, {})[source] = (int(queued), float(oldest_s), time.time())

    async def watch_serve(self, lane: str, app: str, deployment: str, priority: str,
                          node_types: tuple[str, ...] = (), unit: dict[str, float] | None = None) -> None:
        priority_rank(priority)
        self._watches[lane] = _Watch(app, deployment, priority, tuple(node_types), dict(unit or {}))
        self._core.event(time.time(), "watch", lane, f"Serve deployment {app}/{deployment} as {priority}")

    async def step_down(self, lane: str, node_id: str) -> bool:
        """Asked by a unit of a watched lane: whether it should stop now (it runs on a lent node
        while the lane's own nodes have room; see :meth:`BrokerCore.step_down`)."""
        role = self._nodes.get(node_id, ("", ""))[0]
        return role in self._core.policy.lend_roles and self._core.step_down(lane)

    async def unwatch_serve(self, lane: str) -> None:
        self._watches.pop(lane, None)
        self._queues.pop(lane, None)
        self._core.demands.pop(lane, None)

    async def report_node(self, node_id: str, node_type: str, *, drained: bool, reasons: list[str],
                          max_temperature_c: float | None) -> None:
        self._core.report_node(time.time(), node_id, node_type, drained=drained, reasons=reasons,
                               max_temperature_c=max_temperature_c)

    async def node_health(self) -> dict[str, dict[str, Any]]:
        return self._core.node_health()

    async def summary(self, events: int = 20) -> dict[str, Any]:
        return self._core.summary(time.time(), events=events)

    async def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [asdict(e) for e in self._core.events if e.at >= since]


def start_broker(policy: BrokerPolicy | None = None) -> Any:
    """Start the broker on the head node, or return the running one (whose policy then stays)."""
    opts = place(WorkloadProfile(roles=("coordinator",), num_cpus=0)).ray_options()
    broker = Broker.options(name=BROKER_NAME, namespace=NAMESPACE, lifetime="detached",
                            get_if_exists=True, **opts).remote(policy or BrokerPolicy())
    ray.get(broker.run.remote())
    return broker


def _stop_runs(broker: Any, run_ids: list[str] | None, timeout_s: float) -> list[str]:
    """Ask runs to stop and wait up to ``timeout_s`` for their tasks to end; returns those still running."""
    waiting = ray.get(broker.stop_runs.remote(run_ids))
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        time.sleep(0.2)
        waiting = ray.get(broker.active_runs.remote(waiting))
    return waiting


def stop_run(run_id: str, *, timeout_s: float = 60.0) -> bool:
    """Ask run ``run_id`` to checkpoint and stop for good (it is never resumed); wait for it.

    Returns True once its task has ended (or it was not running), False after ``timeout_s``.
    """
    return not _stop_runs(require_broker(), [run_id], timeout_s)


def stop_broker(*, grace_s: float = 30.0) -> None:
    """Stop the broker and the runs it started.

    Running runs are first asked to stop (:func:`stop_run`) and given ``grace_s`` to end; the
    broker is then killed, and with it the tasks of runs that did not end.
    """
    broker = get_broker()
    if broker is None:
        return
    if grace_s > 0:
        try:
            _stop_runs(broker, None, grace_s)
        except ray.exceptions.RayError:  # a broker that does not answer is killed all the same
            pass
    ray.kill(broker)


def submit_run(
    run_id: str,
    entrypoint: str,
    config: dict[str, Any] | None = None,
    *,
    priority: str = "research",
    profile: WorkloadProfile = DRIVER_PROFILE,
    workers: tuple[int, int] | None = None,
) -> None:
    """Start a preemptible run through the broker.

    ``entrypoint`` is ``"package.module:function"``, called in a Ray task placed by ``profile`` as
    ``function(config, run_id=run_id, resume_from=path_or_None)``. It polls :func:`yield_requested`,
    reports checkpoints with :func:`report_checkpoint`, and returns when asked to yield; the broker
    calls it again with ``resume_from`` set to the last checkpoint path it reported.

    ``workers=(min, max)``: the run trains on up to ``max`` GPU workers and can restart on fewer, so
    a burst takes only the workers it needs (down to ``min``) and the rest trains on; the function
    is then also called with ``workers=n``, and grown back to ``max`` after the burst.
    """
    if ":" not in entrypoint:
        raise ConfigError(f"entrypoint {entrypoint!r} must be 'package.module:function'")
    if workers is not None and not 1 <= workers[0] <= workers[1]:
        raise ConfigError(f"workers must be (min, max) with 1 <= min <= max; got {workers}")
    ray.get(require_broker().submit_run.remote(run_id, entrypoint, dict(config or {}), priority,
                                                profile, workers))
