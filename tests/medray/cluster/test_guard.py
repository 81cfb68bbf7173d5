"""The GPU guard: thresholds, then a live drain through Ray driven by injected hot readings on the cluster."""

import threading
import time
import urllib.request

import pytest
import ray

from medray.broker.client import NAMESPACE, broker_summary
from medray.cluster import ray_internals
from medray.cluster.guard import (
    GuardState,
    GuardThresholds,
    guard_name,
    guard_states,
    next_state,
    start_guards,
    violations,
)
from medray.cluster.nvml import GpuReading, NvmlReader, health_summary, limit_gpu_memory, read_gpus
from medray.errors import ConfigError
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile
from tests.conftest import serve_running


def reading(temp=50.0, used=1000.0, **kw):
    values = dict(index=0, name="T4", temperature_c=temp, power_w=30.0, power_limit_w=70.0,
                  memory_used_mib=used, memory_total_mib=16000.0, utilization_pct=10.0)
    return GpuReading(**{**values, **kw})


COOL, HOT = [reading(50)], [reading(92)]
T = GuardThresholds(max_temperature_c=85, drain_after=2)


def test_each_threshold_has_its_reason_code():
    assert violations(COOL, T) == ()
    power = GuardThresholds(max_power_fraction=0.95)
    bad = reading(92, used=15800, ecc_uncorrected=1, xid_errors=2,
                  throttle_reasons=("gpu_idle", "sw_power_cap", "hw_thermal_slowdown"))
    assert violations([bad], T) == ("gpu0:temperature", "gpu0:memory", "gpu0:ecc", "gpu0:xid",
                                    "gpu0:throttle-hw_thermal_slowdown")
    assert violations([reading(power_w=69.0)], power) == ("gpu0:power",)
    assert violations([reading(power_w=69.0)], T) == ()  # power never drains unless asked to


def test_one_spike_does_not_drain_and_a_drain_is_final():
    s = next_state(GuardState(), HOT, T)
    assert not s.drained and s.streak == 1  # one hot reading is a spike, not a drain
    assert next_state(s, COOL, T) == GuardState()  # and a cool one forgets it
    s = next_state(next_state(GuardState(), HOT, T), HOT, T)
    assert s.drained and s.reasons == ("gpu0:temperature",)
    # Ray cannot undrain a node: cool readings change nothing, the node is replaced instead.
    assert next_state(next_state(s, COOL, T), COOL, T) == s


@pytest.mark.parametrize("kwargs, message", [
    ({"max_memory_fraction": 1.5}, "max_memory_fraction"),
    ({"max_power_fraction": 0}, "max_power_fraction"),
    ({"drain_throttle_reasons": ("too_hot",)}, "unknown throttle"),
    ({"drain_after": 0}, "at least 1"),
])
def test_bad_thresholds_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GuardThresholds(**kwargs)


def test_no_gpu_reads_as_empty_and_harmless():
    # CI has no NVIDIA driver: every reading path answers "no GPU" instead of failing.
    assert read_gpus() == []
    reader = NvmlReader()
    assert reader.read() == []
    reader.close()
    assert health_summary([]) == "no GPU"
    assert limit_gpu_memory(4.0) is None  # no CUDA: nothing to cap


def test_health_summary_shows_trouble():
    line = health_summary([reading(91, ecc_uncorrected=2, throttle_reasons=("gpu_idle", "hw_slowdown"))])
    assert line == "T4 91C 30/70W 1000/16000MiB 10% throttled:hw_slowdown ecc:2"


# On the real cluster --------------------------------------------------------------------------



def wait_for(predicate, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def t4_nodes():
    return {n["NodeID"] for n in ray.nodes()
            if n["Alive"] and n["Labels"].get("medray.io/node-type") == "infer-t4"}


def guard_of(node_id):
    """The guard the keeper gave ``node_id`` (the local cluster starts the keeper with it)."""
    def find():
        try:
            return ray.get_actor(guard_name(node_id), namespace=NAMESPACE)
        except ValueError:
            return None
    return wait_for(find, timeout_s=30, what="the keeper to start the node's guard")


def test_the_cluster_starts_a_guard_on_every_gpu_node(ray_cluster):
    gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0}
    assert gpu_nodes and set(start_guards()) == gpu_nodes  # already running: the same guards
    states = guard_states()
    assert {s["node_id"] for s in states} == gpu_nodes and not any(s["drained"] for s in states)


@ray.remote(num_cpus=0)
def _node_id():
    return ray.get_runtime_context().get_node_id()


@pytest.mark.timeout(240)
def test_a_tripped_guard_drains_its_node_live_and_serve_moves_its_replica_first(ray_cluster):
    from ray import serve
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from medray.cluster.local import local_node_specs

    # A second T4 node, for this test only: a drained node leaves the cluster once idle.
    spec = next(s for s in local_node_specs() if s.node_type.name == "infer-t4")
    first = t4_nodes()
    added = ray_cluster.add_node(spec)
    [spare] = wait_for(lambda: t4_nodes() - first, what="the second T4 node")

    # One replica per T4 node (0.6 of a GPU each), the L4 as fallback for their replacements.
    options = place(WorkloadProfile(roles=("infer",), num_cpus=0, num_gpus=0.6), drained=frozenset()).ray_options()

    @serve.deployment(num_replicas=2, ray_actor_options=options)
    class Where:
        def __call__(self):
            return ray.get_runtime_context().get_node_id()

    # No proxy, and Serve shut down after if this test started it: a Serve left running would keep
    # its HTTP options and other tests' `serve_local` ports would never be served.
    serve_was_running = serve_running()
    serve.start(proxy_location="Disabled")
    handle = serve.run(Where.bind(), name="drain-test", route_prefix=None)
    try:
        wait_for(lambda: spare in {handle.remote().result(timeout_s=30) for _ in range(20)},
                 what="a replica on the second T4 node")
        answers, failures, stop = [], [], threading.Event()

        def load():
            while not stop.is_set():
                try:
                    answers.append(handle.remote().result(timeout_s=30))
                except Exception as e:  # noqa: BLE001 - counted: the test wants none
                    failures.append(type(e).__name__)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()

        guard = guard_of(spare)
        ray.get(guard.inject.remote([reading(95.0)]))
        tripped = time.monotonic()
        ray.get(guard.tick.remote())
        status = ray.get(guard.tick.remote())  # drain_after = 2 readings
        assert status["drained"] and status["reasons"] == ["gpu0:temperature"]
        wait_for(lambda: spare in ray_internals.draining_nodes(), timeout_s=5, what="Ray to drain the node")
        assert time.monotonic() - tripped < 5

        # No new work lands there: tasks with the inference placement, and a placement group's
        # bundles (how Ray Train and Tune place workers) even when they name the node's type.
        small = WorkloadProfile(roles=("infer",), num_cpus=0, num_gpus=0.1)
        ran_on = ray.get([_node_id.options(**place(small).ray_options()).remote() for _ in range(4)], timeout=60)
        assert spare not in ran_on
        pg = placement_group([{"CPU": 0.1}], bundle_label_selector=[{"medray.io/node-type": "infer-t4"}])
        ray.get(pg.ready(), timeout=30)
        in_bundle = ray.get(_node_id.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)).remote(),
            timeout=60)
        remove_placement_group(pg)
        assert in_bundle != spare

        # Serve starts the replacement elsewhere, then stops the replica on the drained node.
        def moved():
            recent = answers[-10:]
            return len(recent) == 10 and spare not in recent
        wait_for(moved, timeout_s=90, what="Serve to move its replica off the drained node")
        stop.set()
        loader.join(timeout=60)
        assert failures == [], f"requests failed while the replica moved: {failures}"
        assert len(answers) > 20
        drain = [e for e in (broker_summary(events=50) or {"events": []})["events"] if e["action"] == "drain"]
        assert not drain or "gpu0:temperature" in drain[-1]["reason"]
    finally:
        serve.delete("drain-test")
        if not serve_was_running:
            serve.shutdown()
        ray_cluster.remove_node(added)  # what the autoscaler does with a drained node


def test_guard_readings_reach_the_prometheus_endpoint(ray_cluster):
    t4 = min(t4_nodes() - set(ray_internals.draining_nodes()))
    guard = guard_of(t4)
    ray.get(guard.inject.remote([reading(71.0)]))
    ray.get(guard.tick.remote())
    ray.get(guard.inject.remote(None))
    node = next(n for n in ray.nodes() if n["NodeID"] == t4)
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"

    def exported():
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        lines = [line for line in text.splitlines()
                 if line.startswith("ray_medray_gpu_temperature_c{") and t4[:8] in line]
        return lines if lines and lines[0].endswith(" 71.0") else None

    # Ray prefixes application metrics with "ray_" on the endpoint.
    [line] = wait_for(exported, timeout_s=40, what="the temperature gauge on the metrics endpoint")
    assert 'node_type="infer-t4"' in line and 'gpu="0"' in line
