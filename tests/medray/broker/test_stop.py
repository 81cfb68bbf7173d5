"""The broker stops runs for good, and tells replicas waiting for resources from replicas starting."""

import time

import pytest
import ray

from medray.broker.actor import serve_replicas
from medray.broker.policy import BrokerCore, BrokerPolicy, Demand, RunRecord
from medray.cluster.node_types import ROLE_LABEL
from medray.scheduling.placement import WorkloadProfile

POLICY = BrokerPolicy(pressure_grace_s=1.0, calm_s=5.0)


def run(run_id):
    return RunRecord(run_id=run_id, priority="research", entrypoint="m:f", config={},
                     profile=WorkloadProfile(roles=("train",), num_cpus=0))


def test_a_stopped_run_is_asked_to_yield_and_never_resumed():
    core = BrokerCore(POLICY)
    core.add_run(run("r"))
    assert core.stop_run(1.0, "r") is True  # its task still has to end
    assert core.should_yield("r") and core.runs["r"].state == "stopping"
    core.report_checkpoint("r", 12, "/ckpt/12")
    core.run_ended(2.0, "r")
    assert core.runs["r"].state == "stopped"
    assert [(e.action, e.reason) for e in core.events][-2:] == [
        ("stop", "requested while running"), ("stopped", "GPUs released, last checkpoint step 12")]
    core.report_demand(Demand("emergency", "emergency", pending=0, at=3.0))
    assert core.tick(3.0) == [] and core.tick(20.0) == []  # calm, but nothing to give back
    assert core.stop_run(21.0, "r") is False and core.events[-1].action == "stopped"


def test_stopping_a_yielded_run_keeps_it_from_coming_back():
    core = BrokerCore(POLICY)
    core.add_run(run("r"))
    core.report_demand(Demand("emergency", "emergency", pending=1, queued=4, oldest_s=2.0, at=0.0))
    assert [d.action for d in core.tick(1.0)] == ["yield"]
    core.run_ended(2.0, "r")
    assert core.stop_run(3.0, "r") is False and core.runs["r"].state == "stopped"
    core.report_demand(Demand("emergency", "emergency", pending=0, at=4.0))
    assert core.tick(4.0) == [] and core.tick(10.0) == []
    core.add_run(run("r"))  # a stopped run may be submitted again


@ray.remote(num_cpus=0)
class SlowStart:
    def __init__(self, seconds):
        time.sleep(seconds)

    def ready(self):
        return True


@pytest.mark.timeout(120)
def test_only_replicas_without_a_worker_count_as_pending(ray_cluster):
    prefix = "SERVE_REPLICA::broker-stop-test#lane#"
    head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get(ROLE_LABEL) == "coordinator"]
    # Placed on the head, still in its constructor: Ray says PENDING_CREATION, yet it has its resources.
    starting = SlowStart.options(name=prefix + "starting", namespace="broker-stop-test",
                                 label_selector={ROLE_LABEL: "coordinator"}).remote(30)
    # Asks for a resource no node has: it waits for resources.
    waiting = SlowStart.options(name=prefix + "waiting", namespace="broker-stop-test",
                                resources={"broker-stop-test-nowhere": 1}).remote(0)
    try:
        deadline = time.monotonic() + 60
        while (found := serve_replicas("broker-stop-test", "lane")) != (1, head):
            assert time.monotonic() < deadline, found
            time.sleep(0.5)
        assert not ray.wait([starting.ready.remote()], timeout=0)[0], "the constructor ended already"
    finally:
        ray.kill(starting)
        ray.kill(waiting)
