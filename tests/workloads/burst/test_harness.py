"""A real research run lends its GPUs to the emergency lane and gets them back (shared local cluster).

The research run is the real one (Ray Train, two DDP workers holding both training GPUs) started
through the broker; the lane is the real diagnosis service. The emergency lane is deployed with
more replicas than the inference nodes hold, so the extra ones wait for GPUs: the broker makes
research yield, they land on the training nodes and answer; then the lane shrinks back and
research resumes from the checkpoint it took when it yielded.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest
import ray

from medray.broker.actor import serve_replicas, start_broker, stop_broker
from medray.broker.client import broker_summary
from medray.broker.lanes import lane_url
from medray.broker.policy import BrokerPolicy
from medray.cluster import ray_internals
from medray.cluster.node_types import load_node_types
from tests.workloads.research.conftest import write_training_data
from workloads.burst.harness import (
    LANE_APPS,
    LANE_DEPLOYMENTS,
    BurstPlan,
    PhaseResult,
    prepare_kit,
    start_service,
    stop_service,
    submit_research,
)
from workloads.burst.report import format_table

POLICY = BrokerPolicy(interval_s=0.2, pressure_grace_s=0.5, calm_s=1.0)
# Each emergency replica serves 2.5 studies/s: 16 clients in a closed loop want 4 replicas.
PLAN = BurstPlan(gpu_ms=400.0, step_ms=100.0, checkpoint_every=1, max_replicas=4, downscale_delay_s=2.0,
                 policy=POLICY)
CLIENTS = 16
RUN = "test-burst"


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def steps(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def gpus_free():
    return ray.available_resources().get("GPU", 0) >= ray.cluster_resources()["GPU"]


def free_gpus(role):
    roles = {n["NodeID"]: n["Labels"]["medray.io/role"] for n in ray.nodes() if n["Alive"]}
    return sum(free.get("GPU", 0) for node, free in ray_internals.available_resources_per_node().items() if roles.get(node) == role)


def run_state():
    return {r["run_id"]: r for r in broker_summary(events=0)["runs"]}[RUN]


def emergency_node_types():
    types = {n["NodeID"]: n["Labels"]["medray.io/node-type"] for n in ray.nodes() if n["Alive"]}
    pending, nodes = serve_replicas(LANE_APPS["emergency"], LANE_DEPLOYMENTS["emergency"])
    return pending, sorted(types[n] for n in nodes)


def burst(url, kit, roles):
    """Emergency studies from CLIENTS clients until one is answered on a training node; its answers."""
    headers = {"Authorization": f"Bearer {kit.token}", "Content-Type": kit.content_type}
    answers, stop = [], threading.Event()

    def client():
        with httpx.Client(base_url=url, timeout=120, headers=headers) as c:
            while not stop.is_set():
                r = c.post(lane_url("emergency", "/v1/diagnose"), content=kit.body)
                node_type = r.json()["served_by"]["node_type"] if r.status_code == 200 else None
                answers.append((r.status_code, node_type))
                if roles.get(node_type) == "train":
                    stop.set()

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client) for _ in range(CLIENTS)]
        stop.wait(120)
        stop.set()
        for f in futures:
            f.result()
    return answers


# Two Ray Train starts (before the burst and after it) take 1-3 minutes each on 2 loaded cores.
@pytest.mark.timeout(480)
def test_research_lends_its_gpus_to_the_emergency_lane_and_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    roles = {t.name: t.role for t in load_node_types()}
    data = write_training_data(tmp_path / "data", patients=8, seed=5, shards=2)
    kit = prepare_kit(tmp_path / "kit", data.data, data.labels, PLAN)
    log = tmp_path / "progress.jsonl"
    stop_broker()
    wait_for(gpus_free, 60, "every GPU to be free")
    start_broker(POLICY)
    try:
        submit_research(RUN, {**kit.research, "progress_log": str(log)})
        # Two routine and two emergency replicas fill the inference nodes' GPUs.
        url = start_service(kit, PLAN, borrow=True)
        wait_for(lambda: len(steps(log)) >= 2, 180, "research to train")
        assert free_gpus("train") == 0, "research does not hold the training GPUs"

        # The burst: Serve wants more emergency replicas than the inference nodes hold; the
        # broker makes research yield and the new replicas answer from the training nodes.
        answers = burst(url, kit, roles)
        assert all(status == 200 for status, _ in answers), answers
        assert "train" in {roles.get(node_type) for _, node_type in answers}
        state = wait_for(lambda: (s := run_state())["state"] != "yielding" and s, 60, "the run to end its attempt")
        assert state["yields"] == 1 and state["state"] in ("yielded", "running")
        assert state["checkpoint_step"] == steps(log)[-1]["step"], "the yield checkpoint is not at the last step"

        # The burst is over: Serve scales the lane back, stopping the replicas on the lent nodes
        # first, and research resumes where it yielded.
        calm_from = time.time()
        after = wait_for(lambda: [s for s in steps(log) if s["t"] > calm_from], 120, "research to resume")
        assert {roles[t] for t in emergency_node_types()[1]} == {"infer"}
        assert after[0]["step"] == state["checkpoint_step"] + 1, "steps were redone or skipped"
        state = run_state()
        assert state["state"] == "running" and state["attempt"] == 2
        actions = [(e["action"], e["subject"]) for e in broker_summary(events=100)["events"] if e["subject"] == RUN]
        assert actions == [("submit", RUN), ("lend", RUN), ("yielded", RUN), ("return", RUN)]
    finally:
        stop_service()
        stop_broker(grace_s=120)  # asks the run to stop: its Train workers release the GPUs
    wait_for(gpus_free, 60, "the run's GPUs to be released")


def test_the_burst_plan_rates():
    plan = replace(PLAN, before_s=10, burst_s=20, emergency_rps=1.5, burst_factor=10)
    assert [plan.rate("emergency", t) for t in (0, 9.9, 10, 29.9, 30)] == [1.5, 1.5, 15, 15, 1.5]
    assert plan.rate("routine", 15) == plan.routine_rps


def test_the_table_names_the_p99_goal_only_when_the_static_partition_ran():
    window = {"p50_ms": 40.0, "p99_ms": 90.0, "failed": 0, "requests": 10}
    metrics = {"extra_replicas_serving_s": 8.0, "emergency_replicas_max": 4,
               "emergency": {"before": window, "during": window, "after": window},
               "routine": {"p50_ms": 50.0, "p99_ms": 120.0, "failed": 0}, "research_steps_in_burst": 3}

    def phase(name: str, broker: bool) -> PhaseResult:
        return PhaseResult(name, broker, 0.0, [], [], [], [], None, metrics=dict(metrics))

    alone = format_table([phase("burst", True)], BurstPlan())
    assert "static partition's" not in alone and "broker / static partition" not in alone
    both = format_table([phase("static", False), phase("burst", True)], BurstPlan())
    assert "p99 below the static partition's" in both and "broker / static partition: 1.00" in both


def test_the_burst_episode_takes_only_events_of_the_measured_burst():
    from workloads.burst.harness import burst_episode

    events = [{"t": t, "action": a} for t, a in [
        (-49.0, "lend"), (-40.0, "yielded"), (-12.0, "return"),  # start-up noise before the burst
        (3.5, "lend"), (6.0, "yielded"), (30.0, "return")]]
    assert burst_episode(events, burst_start=0.0) == (3.5, 6.0, 30.0)
    # A lend, but no yield done yet: no episode; a yield done, no return yet: no return time.
    assert burst_episode(events[:4], 0.0) is None
    assert burst_episode(events[:5], 0.0) == (3.5, 6.0, None)
    assert burst_episode(events[:3], 0.0) is None
