"""The discrete-event loop: a fleet, a day of work and one policy; simulated time, no Ray.

Time jumps from event to event on a heap (:mod:`heapq`): study arrivals and completions, replica
starts, research segments ending, preprocessing tasks, GPU faults, and a control tick every
``control_interval_s`` (the broker's ``interval_s``) in which Serve's autoscaling, the broker and the
retries of pending placements run. The decisions are the platform's own:

* node order: :func:`medray.sim.policies.candidate_types` (:func:`medray.scheduling.placement.plan`
  for medray), research gangs by :meth:`medray.scheduling.placement.Placement.group_types`;
* lending, giving back and reclaims: :class:`medray.broker.policy.BrokerCore`, fed
  :class:`~medray.broker.policy.Demand` each tick and carried out as the broker actor does (a yield
  releases the run's GPUs ``run_release_s`` later, a resume restarts it, paying ``run_restart_s``);
* drains: :func:`medray.cluster.guard.next_state` on the readings of a degraded GPU every
  ``guard_interval_s``; a drained node takes no new work and Serve moves its replicas (a replacement
  starts elsewhere, the old replica stops once it serves).

What is modelled and what is not is listed in docs/simulation.md.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medray.broker.policy import BrokerCore, Demand, Event
from medray.cluster.guard import next_state
from medray.cluster.node_types import load_node_types
from medray.cluster.nvml import GpuReading
from medray.errors import ConfigError
from medray.scheduling.placement import WorkloadProfile
from medray.sim.fleet import EPS as _EPS
from medray.sim.fleet import NodeState, fleet_nodes
from medray.sim.policies import Policy, candidate_types
from medray.sim.research import ResearchRuns
from medray.sim.trace import LaneTrace, SimConfig, diagnosis_arrivals, gpu_faults, research_jobs

__all__ = ["DayLog", "Simulation", "simulate"]

# Event codes (heap entries are (time, seq, code, subject)).
_ARRIVAL, _DONE, _READY, _TICK, _GUARD, _FAIL, _PREP_DONE, _PREP_START, _DEGRADE, _CALL = range(10)
# A day's drain phase (arrivals stopped, studies in flight finished) ends after this much simulated time.
_DRAIN_CAP_S = 3600.0


class _Replica:
    __slots__ = ("lane", "node", "ready", "busy", "stopping", "alive", "current", "placed_at")

    def __init__(self, lane: _Lane, node: NodeState, now: float) -> None:
        self.lane, self.node, self.placed_at = lane, node, now
        self.ready = self.busy = self.stopping = False
        self.alive = True
        self.current: tuple[float, int] | None = None


class _Lane:
    """A deployment: the lanes it answers (one, or a site's lanes merged when priorities are off)."""

    def __init__(self, name: str, traces: list[LaneTrace], priority: str, nodes: list[NodeState]) -> None:
        first = traces[0]
        self.name, self.priority, self.trace = name, priority, first
        self.min_replicas = sum(t.min_replicas for t in traces)
        self.max_replicas = sum(t.max_replicas for t in traces)
        self.max_queued = sum(t.max_queued_requests for t in traces)
        self.timeout_s = max(t.queue_timeout_s for t in traces)
        self.cpus, self.gpus = first.num_cpus, first.num_gpus
        self.nodes = nodes
        self.own = [n for n in nodes if not n.lendable]
        self.queue: deque[tuple[float, int]] = deque()
        self.idle: list[_Replica] = []
        self.replicas: list[_Replica] = []
        self.busy = 0
        self.target = self.min_replicas
        self.samples: deque[tuple[float, int]] = deque()
        self.sample_sum = 0
        self.up_since: float | None = None
        self.down_since: float | None = None
        self.failed_epoch = -1

    def active(self) -> list[_Replica]:
        """Replicas that count towards the target: not stopping, not on a drained node (being moved)."""
        return [r for r in self.replicas if not (r.stopping or r.node.drained)]

    def borrowed(self) -> list[_Replica]:
        return [r for r in self.replicas if r.node.lendable and not r.stopping]


@dataclass
class DayLog:
    """What a simulated run produced, raw: the inputs of :mod:`medray.sim.report`."""

    policy: str
    duration_s: float
    kinds: list[str]
    kind_roles: list[str]
    kind_gpus: list[float]
    bin_s: float
    busy_gpu_s: np.ndarray  # [kind, bin] GPU-seconds of useful work
    lanes: list[str]
    lane_priority: list[str]
    lane_slo_s: list[float]
    lane_sites: list[str | None]
    latencies: list[list[list[float]]]  # [lane][bin of arrival] seconds, served studies (the last bin: the drain)
    arrivals: list[int]
    served: list[int]
    rejected: list[int]
    timed_out: list[int]
    failed: list[int]
    research_done_gpu_s: float = 0.0
    research_lost_preempt_gpu_s: float = 0.0
    research_lost_fault_gpu_s: float = 0.0
    research_overhead_gpu_s: float = 0.0
    research_jobs_finished: int = 0
    prep_tasks: int = 0
    prep_makespan_s: float | None = None
    cost_per_day: float = 0.0
    events: list[tuple[float, str, str]] = field(default_factory=list)
    broker_events: list[Event] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0


class Simulation:
    """One policy over one simulated day (:func:`simulate` runs it)."""

    def __init__(self, config: SimConfig, policy: Policy) -> None:
        self.config, self.policy = config, policy
        self.service = config.service
        specs = fleet_nodes(config)
        self.types = load_node_types(config.fleet)
        if not any(s.gpus for s in specs):
            raise ConfigError(f"fleet {config.fleet} has no GPU node")
        self.kinds = sorted({s.node_type.name for s in specs if s.gpus}, key=[t.name for t in self.types].index)
        lend_roles = set(config.broker.lend_roles) if policy.lending else set()
        self.nodes = [NodeState(i, s, self.kinds.index(s.node_type.name) if s.gpus else -1,
                            s.node_type.role in lend_roles) for i, s in enumerate(specs)]
        self.bin_s = config.bin_s
        self.bins = max(1, math.ceil(config.duration_s / self.bin_s))
        self.busy = np.zeros((len(self.kinds), self.bins))
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.epoch = 0  # bumped whenever resources are freed: gates placement retries
        self.rng = np.random.default_rng(config.seed)
        self.events: list[tuple[float, str, str]] = []
        self.broker_events: list[Event] = []
        self.core = BrokerCore(config.broker, on_event=self.broker_events.append) if policy.lending else None
        self._build_lanes()
        self._build_research()
        self._build_prep()
        self._build_faults()

    # Set-up -----------------------------------------------------------------------------------

    def _order(self, profile: WorkloadProfile) -> list[NodeState]:
        order = {t.name: i for i, t in enumerate(candidate_types(self.policy, profile, self.types))}
        ranked = [n for n in self.nodes if n.spec.node_type.name in order]
        return sorted(ranked, key=lambda n: (order[n.spec.node_type.name], n.i))

    def _build_lanes(self) -> None:
        traces = self.config.lanes
        self.lane_names = [t.name for t in traces]
        n, bins = len(traces), self.bins + 1
        self.lat: list[list[list[float]]] = [[[] for _ in range(bins)] for _ in range(n)]
        self.arrived, self.served, self.rejected = [0] * n, [0] * n, [0] * n
        self.timed_out, self.failed = [0] * n, [0] * n
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(traces):
            key = t.name if self.policy.priority_lanes else f"diagnosis@{t.site or 'main'}"
            groups.setdefault(key, []).append(i)
        self.lanes: list[_Lane] = []
        self.lane_of: list[_Lane] = [None] * n  # type: ignore[list-item]
        for name, members in groups.items():
            ts = [traces[i] for i in members]
            t = ts[0]
            profile = WorkloadProfile(roles=t.roles, num_cpus=t.num_cpus, num_gpus=t.num_gpus,
                                      gpu_memory_gb=t.gpu_memory_gb, latency="realtime", site=t.site)
            top = min((x.priority for x in ts), key=("emergency", "clinical").index)
            lane = _Lane(name, ts, top, self._order(profile))
            self.lanes.append(lane)
            for i in members:
                self.lane_of[i] = lane
        self.arrival_times = [diagnosis_arrivals(t, self.config.duration_s, self.rng) for t in traces]
        self.arrival_next = [0] * n
        for i, times in enumerate(self.arrival_times):
            self.arrived[i] = len(times)
            if len(times):
                self._push(float(times[0]), _ARRIVAL, i)

    def _build_research(self) -> None:
        r = self.config.research
        profile = WorkloadProfile(roles=self.policy.research_roles or r.roles, num_cpus=r.cpus_per_worker,
                                  num_gpus=1.0, gpu_memory_gb=r.gpu_memory_gb)
        self.research = ResearchRuns(self, profile, self._order(profile), self.types,
                                     research_jobs(self.config, self.rng))

    def _build_prep(self) -> None:
        p = self.config.prep
        self.prep_left = math.ceil(p.series / p.series_per_task) if p.series else 0
        self.prep_total = self.prep_left
        self.prep_running = 0
        self.prep_done = 0
        self.prep_task_s = p.series_per_task * p.slices_per_series * self.service.prep_cpu_ms_per_slice / 1000.0
        self.prep_started: float | None = None
        self._prep_epoch = -1
        self.prep_makespan: float | None = None
        profile = WorkloadProfile(roles=p.roles, num_cpus=1.0, storage=p.storage)
        self.prep_nodes = self._order(profile)
        if self.prep_left:
            self._push(p.start_s, _PREP_START, None)

    def _build_faults(self) -> None:
        roles = set(self.config.faults.roles)
        pool = [n for n in self.nodes if n.spec.gpus and n.spec.node_type.role in roles]
        for f in gpu_faults(self.config, len(pool), self.rng):
            self._push(f.at_s, _DEGRADE, pool[f.node])

    # The loop ---------------------------------------------------------------------------------

    def _push(self, t: float, code: int, subject: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, code, subject))

    def call_at(self, t: float, fn: Callable[[Any], None], arg: Any) -> None:
        """Call ``fn(arg)`` at simulated time ``t``."""
        self._push(t, _CALL, (fn, arg))

    def log(self, what: str, subject: str) -> None:
        """Record an event of the day (drains, lends carried out, borrowed replicas serving...)."""
        self.events.append((self.now, what, subject))

    def run(self) -> DayLog:
        """Simulate the day, then finish the studies in flight; returns the raw :class:`DayLog`."""
        end = self.config.duration_s
        for lane in self.lanes:  # the deployments are up when the day starts
            for _ in range(lane.target):
                self._place_replica(lane, start_s=0.0)
        self._push(0.0, _TICK, None)
        handlers = {_ARRIVAL: self._on_arrival, _DONE: self._on_done, _READY: self._on_ready, _TICK: self._on_tick,
                    _GUARD: self._on_guard, _FAIL: self._on_fail, _PREP_DONE: self._on_prep_done,
                    _PREP_START: self._on_prep_start, _DEGRADE: self._on_degrade, _CALL: self._on_call}
        heap, pop = self.heap, heapq.heappop
        on_arrival, on_done = self._on_arrival, self._on_done
        while heap and heap[0][0] < end:
            t, _, code, subject = pop(heap)
            self.now = t
            if code == _DONE:
                on_done(subject)
            elif code == _ARRIVAL:
                on_arrival(subject)
            else:
                handlers[code](subject)
        self.research.close(end)
        self._drain(end)
        return self._day_log()

    def _on_call(self, item: tuple[Callable[[Any], None], Any]) -> None:
        fn, arg = item
        fn(arg)

    def _drain(self, end: float) -> None:
        """Arrivals have stopped: let replicas finish what was taken (nothing else moves), then count the rest."""
        heap = self.heap
        while heap and heap[0][0] < end + _DRAIN_CAP_S and any(lane.queue or lane.busy for lane in self.lanes):
            t, _, code, subject = heapq.heappop(heap)
            self.now = t
            if code == _DONE:
                self._on_done(subject)
            elif code == _READY:
                self._on_ready(subject)
        for lane in self.lanes:
            for _, cls in lane.queue:
                self.rejected[cls] += 1
            lane.queue.clear()
            for r in lane.replicas:
                if r.busy and r.current is not None:
                    self.failed[r.current[1]] += 1
                    r.busy, r.current = False, None

    # Studies ----------------------------------------------------------------------------------

    def _on_arrival(self, cls: int) -> None:
        times, k = self.arrival_times[cls], self.arrival_next[cls] + 1
        self.arrival_next[cls] = k
        if k < len(times):
            self._push(float(times[k]), _ARRIVAL, cls)
        lane = self.lane_of[cls]
        if lane.idle:
            self._serve(lane.idle.pop(), self.now, cls)
        elif len(lane.queue) >= lane.max_queued:
            self.rejected[cls] += 1
        else:
            lane.queue.append((self.now, cls))

    def _serve(self, rep: _Replica, arrived: float, cls: int) -> None:
        rep.busy, rep.current = True, (arrived, cls)
        rep.lane.busy += 1
        node = rep.node
        gpu_s = self.service.study_gpu_s * node.slow
        h = int(self.now // self.bin_s)
        if h < self.bins:
            self.busy[node.kind, h] += gpu_s * rep.lane.gpus
        self.seq += 1
        heapq.heappush(self.heap, (self.now + self.service.request_s + gpu_s, self.seq, _DONE, rep))

    def _on_done(self, rep: _Replica) -> None:
        if not rep.alive or not rep.busy:
            return
        arrived, cls = rep.current  # type: ignore[misc]
        lane = rep.lane
        rep.busy, rep.current = False, None
        lane.busy -= 1
        self.served[cls] += 1
        self.lat[cls][int(arrived // self.bin_s)].append(self.now - arrived)
        if rep.stopping:
            self._remove(rep)
        else:
            self._take_next(rep)

    def _take_next(self, rep: _Replica) -> None:
        lane, now = rep.lane, self.now
        queue = lane.queue
        while queue:
            arrived, cls = queue.popleft()
            if now - arrived > lane.timeout_s:
                self.timed_out[cls] += 1  # answered 503 + Retry-After at its queue timeout
                continue
            self._serve(rep, arrived, cls)
            return
        lane.idle.append(rep)

    # Replicas ---------------------------------------------------------------------------------

    def _place_replica(self, lane: _Lane, *, start_s: float | None = None) -> _Replica | None:
        for node in lane.nodes:
            if node.fits(lane.cpus, lane.gpus):
                node.free_cpus -= lane.cpus
                node.free_gpus -= lane.gpus
                rep = _Replica(lane, node, self.now)
                node.replicas.add(rep)
                lane.replicas.append(rep)
                wait = self.service.replica_start_s if start_s is None else start_s
                self._push(self.now + wait, _READY, rep)
                if node.lendable:
                    self.log("borrowed-placed", lane.name)
                return rep
        return None

    def _on_ready(self, rep: _Replica) -> None:
        if not rep.alive:
            return
        rep.ready = True
        if rep.node.lendable:
            self.log("borrowed-serving", rep.lane.name)
        moved = next((r for r in rep.lane.replicas if r.node.drained and not r.stopping), None)
        if moved is not None:  # a replacement serves: the replica on the drained node stops
            self._stop(moved)
        if rep.stopping:
            self._remove(rep)
        else:
            self._take_next(rep)

    def _stop(self, rep: _Replica) -> None:
        rep.stopping = True
        if not rep.busy:
            self._remove(rep)

    def _remove(self, rep: _Replica) -> None:
        rep.alive = False
        lane, node = rep.lane, rep.node
        lane.replicas.remove(rep)
        if rep in lane.idle:
            lane.idle.remove(rep)
        node.replicas.discard(rep)
        if not node.dead:
            node.free_cpus += lane.cpus
            node.free_gpus += lane.gpus
            self.epoch += 1

    def _reconcile(self, lane: _Lane) -> None:
        """Start or stop replicas until the lane has its target (Serve's controller loop)."""
        active = lane.active()
        if len(active) > lane.target:
            # Scale down: not-yet-serving first, then idle, newest first.
            extra = sorted(active, key=lambda r: (r.ready, r.busy, -r.placed_at))[:len(active) - lane.target]
            for rep in extra:
                self._stop(rep)
            return
        missing = lane.target - len(active)
        if missing and lane.failed_epoch != self.epoch:
            for _ in range(missing):
                if self._place_replica(lane) is None:
                    lane.failed_epoch = self.epoch
                    break

    def _autoscale(self, lane: _Lane) -> None:
        """Serve's autoscaling: the mean of ongoing requests over the look-back window / target, with delays."""
        t = lane.trace
        now = self.now
        ongoing = lane.busy + len(lane.queue)
        lane.samples.append((now, ongoing))
        lane.sample_sum += ongoing
        while lane.samples[0][0] < now - t.look_back_period_s:
            lane.sample_sum -= lane.samples.popleft()[1]
        mean = lane.sample_sum / len(lane.samples)
        desired = min(max(math.ceil(mean / t.target_ongoing_requests - _EPS), lane.min_replicas), lane.max_replicas)
        if desired > lane.target:
            lane.down_since = None
            lane.up_since = now if lane.up_since is None else lane.up_since
            if now - lane.up_since >= t.upscale_delay_s:
                lane.target, lane.up_since = desired, None
        elif desired < lane.target:
            lane.up_since = None
            lane.down_since = now if lane.down_since is None else lane.down_since
            if now - lane.down_since >= t.downscale_delay_s:
                lane.target, lane.down_since = desired, None
        else:
            lane.up_since = lane.down_since = None
        self._reconcile(lane)

    # Control tick: autoscaling, broker, retries -----------------------------------------------

    def _on_tick(self, _: Any) -> None:
        for lane in self.lanes:
            self._autoscale(lane)
        if self.core is not None:
            self._broker_tick()
        self.research.retry()
        if self.prep_left and self.prep_started is not None and self._prep_epoch != self.epoch:
            self._prep_epoch = self.epoch
            self._dispatch_prep()
        self._push(self.now + self.config.control_interval_s, _TICK, None)

    def _demand(self, lane: _Lane) -> Demand:
        active = lane.active()
        borrowed = sum(1 for r in active if r.node.lendable)
        room = 0
        if borrowed:
            for n in lane.own:
                if n.usable():
                    room += int(min(n.free_gpus / lane.gpus, n.free_cpus / lane.cpus if lane.cpus else 1e9) + _EPS)
        oldest = self.now - lane.queue[0][0] if lane.queue else 0.0
        return Demand(lane=lane.name, priority=lane.priority, pending=max(0, lane.target - len(active)),
                      running=len(active), borrowed=borrowed, queued=len(lane.queue), oldest_s=oldest,
                      at=self.now, source="sim", room=room)

    def _broker_tick(self) -> None:
        core = self.core
        assert core is not None
        for lane in self.lanes:
            core.report_demand(self._demand(lane))
        for decision in core.tick(self.now):
            self.research.carry_out(decision)
        for lane in self.lanes:
            for rep in lane.borrowed():
                if core.step_down(lane.name):
                    self.log("step-down", lane.name)
                    self._stop(rep)
                    self._reconcile(lane)

    # Time accounting -------------------------------------------------------------------------
    def add_busy(self, kind: int, a: float, b: float) -> None:
        """Count GPU ``kind`` busy (one GPU) from ``a`` to ``b``, split over the time bins."""
        b = min(b, self.config.duration_s)
        while a < b:
            h = int(a // self.bin_s)
            edge = min(b, (h + 1) * self.bin_s)
            self.busy[kind, h] += edge - a
            a = edge

    # Preprocessing ----------------------------------------------------------------------------

    def _on_prep_start(self, _: Any) -> None:
        self.prep_started = self.now
        self.log("prep-start", f"{self.prep_left} tasks")
        self._dispatch_prep()

    def _dispatch_prep(self) -> None:
        cap = self.config.prep.max_tasks or 10**9
        for node in self.prep_nodes:
            while self.prep_left and self.prep_running < cap and node.fits(1.0, 0.0):
                node.free_cpus -= 1.0
                node.prep += 1
                self.prep_left -= 1
                self.prep_running += 1
                self._push(self.now + self.prep_task_s, _PREP_DONE, node)
            if not self.prep_left or self.prep_running >= cap:
                return

    def _on_prep_done(self, node: NodeState) -> None:
        if node.dead:
            return  # counted lost and queued again when the node failed
        node.prep -= 1
        node.free_cpus += 1.0
        self.prep_running -= 1
        self.prep_done += 1
        self.epoch += 1
        if self.prep_done == self.prep_total:
            self.prep_makespan = self.now - (self.prep_started or 0.0)
            self.log("prep-done", f"{self.prep_total} tasks")
        elif self.prep_left:
            self._dispatch_prep()

    # Faults and the guard ---------------------------------------------------------------------

    def _reading(self, node: NodeState) -> list[GpuReading]:
        f = self.config.faults
        return [GpuReading(index=0, name=node.spec.node_type.accelerator or "gpu", temperature_c=f.temperature_c,
                           power_w=0.0, power_limit_w=0.0, memory_used_mib=0.0, memory_total_mib=0.0,
                           utilization_pct=100.0, throttle_reasons=f.throttle_reasons)]

    def _on_degrade(self, node: NodeState) -> None:
        if node.dead:
            return
        node.slow = self.config.faults.slowdown
        self.log("gpu-degraded", node.spec.node_id)
        self._push(self.now + self.config.faults.fail_after_s, _FAIL, node)
        if self.policy.guard:
            every = self.config.guard_interval_s
            self._push((math.floor(self.now / every) + 1) * every, _GUARD, node)

    def _on_guard(self, node: NodeState) -> None:
        if node.dead or node.guard.drained:
            return
        node.guard = next_state(node.guard, self._reading(node), self.config.guard)
        if not node.guard.drained:
            self._push(self.now + self.config.guard_interval_s, _GUARD, node)
            return
        node.drained = True
        self.log("drain", node.spec.node_id)
        if self.core is not None:
            self.core.report_node(self.now, node.spec.node_id, node.spec.node_type.name, drained=True,
                                  reasons=node.guard.reasons, max_temperature_c=self.config.faults.temperature_c)
        # Serve moves its replicas: replacements start elsewhere, each old one stops once one serves.
        for lane in {rep.lane for rep in node.replicas}:
            self._reconcile(lane)

    def _on_fail(self, node: NodeState) -> None:
        node.dead = True
        self.log("gpu-failed", node.spec.node_id)
        for rep in list(node.replicas):
            self.log("replica-lost", rep.lane.name)
            if rep.busy and rep.current is not None:
                self.failed[rep.current[1]] += 1
                rep.lane.busy -= 1
                rep.busy, rep.current = False, None
            self._remove(rep)
        self.research.fail_node(node)
        if node.prep:
            self.prep_left += node.prep  # tasks lost with the node run again
            self.prep_running -= node.prep
            node.prep = 0
        self.epoch += 1

    # Result -----------------------------------------------------------------------------------

    def _day_log(self) -> DayLog:
        kind_gpus = [sum(n.spec.gpus for n in self.nodes if n.kind == k) for k in range(len(self.kinds))]
        per_type: dict[str, int] = {}
        for n in self.nodes:
            per_type[n.spec.node_type.name] = per_type.get(n.spec.node_type.name, 0) + 1
        price = {t.name: t.price_per_hour for t in self.types}
        cost = sum(price[name] * count for name, count in per_type.items()) * self.config.duration_s / 3600.0
        return DayLog(
            policy=self.policy.name, duration_s=self.config.duration_s, kinds=list(self.kinds), kind_gpus=kind_gpus,
            kind_roles=[next(t.role for t in self.types if t.name == k) for k in self.kinds],
            bin_s=self.bin_s,
            busy_gpu_s=self.busy, lanes=list(self.lane_names),
            lane_priority=[t.priority for t in self.config.lanes], lane_slo_s=[t.slo_s for t in self.config.lanes],
            lane_sites=[t.site for t in self.config.lanes],
            latencies=self.lat, arrivals=self.arrived, served=self.served, rejected=self.rejected,
            timed_out=self.timed_out, failed=self.failed,
            research_done_gpu_s=sum(r.done_gpu_s for r in self.research.runs.values()),
            research_lost_preempt_gpu_s=self.research.lost_preempt, research_lost_fault_gpu_s=self.research.lost_fault,
            research_overhead_gpu_s=self.research.overhead, research_jobs_finished=self.research.finished_jobs,
            prep_tasks=self.prep_total, prep_makespan_s=self.prep_makespan, cost_per_day=cost,
            events=self.events, broker_events=self.broker_events,
        )


def simulate(config: SimConfig, policy: Policy, *, seed: int | None = None) -> DayLog:
    """Run ``policy`` over the day of ``config`` (``seed`` overrides the config's); returns its :class:`DayLog`."""
    import time

    if seed is not None:
        config = replace(config, seed=seed)
    started, cpu = time.perf_counter(), time.process_time()
    log = Simulation(config, policy).run()
    log.wall_s, log.cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return log
