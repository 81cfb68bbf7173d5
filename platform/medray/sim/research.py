"""Research jobs on the simulated cluster: a FIFO queue, gangs placed together, broker runs that yield and resume.

A job's GPUs are placed as one gang (a Ray Train worker group is a placement group): under medray's
policy by :meth:`medray.scheduling.placement.Placement.group_types` over a
:class:`~medray.scheduling.placement.LoadSnapshot` of the free nodes, else the first nodes in the
policy's order. Under a lending policy every job is a :class:`medray.broker.policy.RunRecord` of the
simulation's :class:`~medray.broker.policy.BrokerCore`, and its decisions are carried out as the broker
actor does: a ``yield`` checkpoints and releases the GPUs ``run_release_s`` later (nothing is redone: the
run saves at the step it stops), a ``resume`` starts it again on the workers named, after
``run_restart_s`` of start-up. A lost GPU ends a run at its last periodic checkpoint; the job is
queued again first, from there.

Research GPU-hours *lost to preemption* are the start-up time of restarts the broker caused (GPUs
held, nothing trained); *lost to faults* are the training since the last checkpoint of runs whose GPU
failed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from medray.broker.policy import BrokerCore, Decision, RunRecord
from medray.cluster.node_types import NodeType
from medray.scheduling.placement import LoadSnapshot, NodeLoad, WorkloadProfile, plan
from medray.sim.fleet import EPS as _EPS
from medray.sim.fleet import NodeState
from medray.sim.policies import Policy, candidate_types
from medray.sim.trace import ResearchJob, ServiceTimes, SimConfig

__all__ = ["Run", "ResearchRuns"]


class _Clock(Protocol):
    """What research needs of the simulation: its time, its event queue, its books."""

    now: float
    epoch: int
    config: SimConfig
    service: ServiceTimes
    policy: Policy
    core: BrokerCore | None

    def call_at(self, t: float, fn: Callable[[Any], None], arg: Any) -> None: ...
    def log(self, what: str, subject: str) -> None: ...
    def add_busy(self, kind: int, a: float, b: float) -> None: ...


class Run:
    """One research job's state in the simulation (its broker record lives in the ``BrokerCore``)."""

    __slots__ = ("job", "run_id", "workers", "nodes", "done_gpu_s", "seg_start", "gen", "state")

    def __init__(self, job: ResearchJob) -> None:
        self.job, self.run_id = job, job.job_id
        self.workers = job.workers
        self.nodes: list[NodeState] = []
        self.done_gpu_s = 0.0
        self.seg_start = 0.0  # when the current segment trains from (after its start-up)
        self.gen = 0
        self.state = "queued"  # queued | running | releasing | waiting | pending | finished


class ResearchRuns:
    """Every research job of a simulated day, queued, running or yielded."""

    def __init__(self, sim: _Clock, profile: WorkloadProfile, order: list[NodeState], types: Sequence[NodeType],
                 jobs: list[ResearchJob]) -> None:
        """``profile``: one worker's; ``order``: the nodes its workers may use, in the policy's order."""
        self.sim = sim
        self.run_profile = profile
        self.run_types = candidate_types(sim.policy, profile, types)
        self.run_nodes = order
        self.runs = {job.job_id: Run(job) for job in jobs}
        self.run_queue: list[Run] = []
        self.lost_preempt = self.lost_fault = self.overhead = 0.0
        self.finished_jobs = 0
        self._epoch = -1
        for run in self.runs.values():
            sim.call_at(run.job.submit_s, self.submit, run)

    def carry_out(self, decision: Decision) -> None:
        """Do what the broker decided for a run: release its GPUs, or start it again."""
        run = self.runs[decision.run_id]
        if decision.action == "yield":
            if run.state == "running":
                run.state = "releasing"
                self.sim.call_at(self.sim.now + self.sim.service.run_release_s, self.on_release, run)
            elif run.state == "pending":  # resumed but not placed yet: it holds nothing, so it has yielded
                run.state = "waiting"
                for follow in self.sim.core.run_ended(self.sim.now, run.run_id):  # type: ignore[union-attr]
                    self.carry_out(follow)
        elif decision.action == "resume":
            if decision.workers:
                run.workers = decision.workers
            if run.state == "finished":  # it ended while yielding: tell the broker it is done
                self.sim.core.run_ended(self.sim.now, run.run_id)  # type: ignore[union-attr]
                return
            run.state = "pending"
            self._start(run, preempted=True)

    def submit(self, run: Run) -> None:
        """A job is submitted: queue it and start what fits."""
        self.run_queue.append(run)
        self.retry(force=True)

    def _gang(self, count: int) -> list[NodeState] | None:
        """Nodes for ``count`` workers now, or None: medray fills types by ``Placement.group_types``."""
        cpus = self.run_profile.num_cpus
        free = [n for n in self.run_nodes if n.fits(cpus, 1.0)]
        if self.sim.policy.placement == "plan":
            load = LoadSnapshot(tuple(NodeLoad(n.spec.node_id, n.spec.node_type.name, n.free_cpus, n.free_gpus,
                                               n.spec.cpus, n.spec.gpus) for n in free))
            order = plan(self.run_profile, self.run_types).group_types(count, load)
        else:
            order = None
        chosen: list[NodeState] = []
        taken: dict[int, float] = {}
        for k in range(count):
            for n in free:
                if order is not None and n.spec.node_type != order[k]:
                    continue
                used = taken.get(n.i, 0.0)
                if n.free_gpus - used >= 1.0 - _EPS and n.free_cpus - used * cpus >= cpus - _EPS:
                    taken[n.i] = used + 1.0
                    chosen.append(n)
                    break
            else:
                return None
        return chosen

    def _start(self, run: Run, *, preempted: bool = False) -> bool:
        nodes = self._gang(run.workers)
        if nodes is None:
            return False
        cpus = self.run_profile.num_cpus
        for n in nodes:
            n.free_gpus -= 1.0
            n.free_cpus -= cpus
            n.runs.add(run.run_id)
        run.nodes, run.state = nodes, "running"
        run.seg_start = self.sim.now + self.sim.service.run_restart_s
        restart = self.sim.service.run_restart_s * run.workers
        if preempted:
            self.lost_preempt += restart
        else:
            self.overhead += restart
        run.gen += 1
        left = run.job.gpu_s - run.done_gpu_s
        self.sim.call_at(run.seg_start + left / run.workers, self.on_finish, (run, run.gen))
        if self.sim.core is not None and not preempted:
            job = run.job
            self.sim.core.add_run(RunRecord(run_id=run.run_id, priority=self.sim.config.research.priority, entrypoint="sim",
                                        config={}, profile=self.run_profile, submitted_at=self.sim.now,
                                        workers=run.workers, min_workers=job.min_workers, max_workers=job.workers))
        self.sim.log("run-start", run.run_id)
        return True

    def retry(self, force: bool = False) -> None:
        """Start resumed runs, then queued jobs, on GPUs freed since the last try (``force``: try anyway)."""
        if not force and self._epoch == self.sim.epoch:
            return
        self._epoch = self.sim.epoch
        free = self._free_units()
        if not free:
            return
        waiting = [r for r in self.runs.values() if r.state == "pending"]
        for run in waiting:
            if run.workers <= free and self._start(run, preempted=True):
                free = self._free_units()
        if any(r.state in ("pending", "waiting", "releasing") for r in self.runs.values()):
            return  # the lent GPUs go back to the runs that lent them first
        for run in list(self.run_queue):
            if not free:
                return
            if run.workers <= free and self._start(run):
                self.run_queue.remove(run)
                free = self._free_units()

    def _free_units(self) -> int:
        cpus = self.run_profile.num_cpus
        return sum(int(min(n.free_gpus, n.free_cpus / cpus if cpus else 1e9) + _EPS)
                   for n in self.run_nodes if n.fits(cpus, 1.0))

    def end_segment(self, run: Run, t: float, *, keep: str) -> None:
        """Stop ``run``'s training at ``t``: ``keep`` = "all" (a checkpoint at the stop) or "checkpoint"."""
        trained = max(0.0, t - run.seg_start)
        if keep == "checkpoint":
            every = self.sim.config.research.checkpoint_every_s
            kept = math.floor(trained / every) * every
            self.lost_fault += (trained - kept) * run.workers
        else:
            kept = trained
        left = run.job.gpu_s - run.done_gpu_s
        run.done_gpu_s += min(kept * run.workers, left)
        for n in run.nodes:
            if trained > 0:
                self.sim.add_busy(n.kind, run.seg_start, t)
            n.runs.discard(run.run_id)
            if not n.dead:
                n.free_gpus += 1.0
                n.free_cpus += self.run_profile.num_cpus
        run.nodes = []
        run.gen += 1
        self.sim.epoch += 1

    def on_release(self, run: Run) -> None:
        if run.state != "releasing":
            return
        self.end_segment(run, self.sim.now, keep="all")
        run.state = "waiting"
        self.sim.log("run-released", run.run_id)
        for decision in self.sim.core.run_ended(self.sim.now, run.run_id):  # type: ignore[union-attr]
            self.carry_out(decision)

    def on_finish(self, item: tuple[Run, int]) -> None:
        run, gen = item
        if gen != run.gen or run.state not in ("running", "releasing"):
            return
        self.end_segment(run, self.sim.now, keep="all")
        run.state = "finished"
        self.finished_jobs += 1
        self.sim.log("run-finished", run.run_id)
        if self.sim.core is not None:
            # Asked to yield as it reached its end, it counts as yielded there; its resume finds it done.
            self.sim.core.run_ended(self.sim.now, run.run_id)
        self.retry(force=True)

    def close(self, end: float) -> None:
        """The day ends: count the training of running jobs up to ``end``."""
        for run in self.runs.values():
            if run.state in ("running", "releasing") and run.nodes:
                trained = max(0.0, end - run.seg_start)
                run.done_gpu_s += min(trained * run.workers, run.job.gpu_s - run.done_gpu_s)
                for n in run.nodes:
                    self.sim.add_busy(n.kind, run.seg_start, end)

    def fail_node(self, node: NodeState) -> None:
        """``node``'s GPU is lost: its runs end at their last checkpoint and are queued again first."""
        for run_id in list(node.runs):
            run = self.runs[run_id]
            self.end_segment(run, self.sim.now, keep="checkpoint")
            run.state = "queued"
            if self.sim.core is not None:  # submitted again from its checkpoint, as a new attempt
                self.sim.core.run_ended(self.sim.now, run_id, error="GpuLost")
            self.run_queue.insert(0, run)
