"""The GPU guard: thresholds with hysteresis, then drains driven by injected hot readings on the cluster."""

import time
import urllib.request

import pytest
import ray

from medray.broker.actor import stop_broker
from medray.broker.client import broker_summary
from medray.cluster.guard import (
    GuardState,
    GuardThresholds,
    guard_states,
    next_state,
    start_guards,
    stop_guards,
    violations,
)
from medray.cluster.nvml import GpuReading, NvmlReader, health_summary, limit_gpu_memory, read_gpus
from medray.errors import ConfigError
from medray.scheduling.options import place
from medray.scheduling.placement import NODE_ID_LABEL, WorkloadProfile


def reading(temp=50.0, used=1000.0, **kw):
    values = dict(index=0, name="T4", temperature_c=temp, power_w=30.0, power_limit_w=70.0,
                  memory_used_mib=used, memory_total_mib=16000.0, utilization_pct=10.0)
    return GpuReading(**{**values, **kw})


COOL, HOT = [reading(50)], [reading(92)]
T = GuardThresholds(max_temperature_c=85, recover_temperature_c=78, drain_after=2, recover_after=3)


def test_each_threshold_has_its_reason_code():
    assert violations(COOL, T) == ()
    power = GuardThresholds(max_power_fraction=0.95, recover_power_fraction=0.8)
    bad = reading(92, used=15800, ecc_uncorrected=1, xid_errors=2,
                  throttle_reasons=("gpu_idle", "sw_power_cap", "hw_thermal_slowdown"))
    assert violations([bad], T) == ("gpu0:temperature", "gpu0:memory", "gpu0:ecc", "gpu0:xid",
                                    "gpu0:throttle-hw_thermal_slowdown")
    assert violations([reading(power_w=69.0)], power) == ("gpu0:power",)
    assert violations([reading(power_w=69.0)], T) == ()  # power never drains unless asked to


def test_drain_and_recovery_have_hysteresis_in_value_and_time():
    s = next_state(GuardState(), HOT, T)
    assert not s.drained and s.streak == 1  # one hot reading is a spike, not a drain
    assert next_state(s, COOL, T) == GuardState()  # and a cool one forgets it
    s = next_state(next_state(GuardState(), HOT, T), HOT, T)
    assert s.drained and s.reasons == ("gpu0:temperature",)
    # 80 C is under the drain line (85) but over the recover line (78): still drained.
    warm = [reading(80)]
    assert next_state(next_state(next_state(s, warm, T), warm, T), warm, T).drained
    s = next_state(next_state(s, COOL, T), COOL, T)
    assert s.drained, "recovered after two cool readings, recover_after is three"
    assert next_state(s, COOL, T) == GuardState()


@pytest.mark.parametrize("kwargs, message", [
    ({"recover_temperature_c": 90}, "recover_temperature_c"),
    ({"recover_memory_fraction": 0.99}, "recover_memory_fraction"),
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

FAST = GuardThresholds(drain_after=2, recover_after=2)
GPU_WORK = WorkloadProfile(roles=("infer",), num_cpus=0.1, num_gpus=0.5)


def where():
    return ray.get_runtime_context().get_node_labels()["medray.io/node-type"]


where_task = ray.remote(where)


def wait_for(predicate, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def node_id_of(node_type):
    return next(n["NodeID"] for n in ray.nodes()
                if n["Alive"] and n["Labels"].get("medray.io/node-type") == node_type)


@pytest.fixture
def t4_guard(ray_cluster):
    t4 = node_id_of("infer-t4")
    guards = start_guards(thresholds=FAST, interval_s=0.3, node_ids=[t4])
    yield t4, guards[t4]
    stop_guards()
    stop_broker()


def landed(n):
    """Where n GPU tasks run, started together once every GPU is free (leases linger a moment)."""
    wait_for(lambda: ray.available_resources().get("GPU", 0) >= ray.cluster_resources()["GPU"],
             what="every GPU to be free")
    return set(ray.get([where_task.options(**place(GPU_WORK).ray_options()).remote()
                        for _ in range(n)], timeout=60))


def test_a_hot_gpu_drains_its_node_until_it_cools(t4_guard):
    t4, guard = t4_guard
    status = ray.get(guard.tick.remote())
    assert status["node_id"] == t4 and status["gpus"] == [] and not status["drained"]
    assert landed(1) == {"infer-t4"}  # the cheapest inference type, while healthy

    ray.get(guard.inject.remote([reading(95.0)]))
    wait_for(lambda: t4 in {d["node_id"] for d in broker_summary()["drained"]},
             what="the broker to learn of the drain")
    p = wait_for(lambda: (lambda p: p if NODE_ID_LABEL in p.label_selector else None)(place(GPU_WORK)),
                 what="placement to exclude the drained node")
    assert p.label_selector[NODE_ID_LABEL] == f"!in({t4})"
    assert landed(4) == {"infer-l4"}, "GPU work landed on a drained node"
    assert NODE_ID_LABEL not in place(WorkloadProfile(roles=("infer",), num_cpus=0.1)).label_selector
    drain = [e for e in broker_summary(events=50)["events"] if e["action"] == "drain"]
    assert drain[-1]["subject"] == "infer-t4" and "gpu0:temperature" in drain[-1]["reason"]
    [state] = guard_states()
    assert state["drained"] and state["gpus"][0]["temperature_c"] == 95.0

    # 80 C: below the drain line, above the recover line: stays drained.
    ray.get(guard.inject.remote([reading(80.0)]))
    time.sleep(1.5)
    assert t4 in {d["node_id"] for d in broker_summary()["drained"]}

    ray.get(guard.inject.remote([reading(60.0)]))
    wait_for(lambda: not broker_summary()["drained"], what="the node to recover")
    wait_for(lambda: NODE_ID_LABEL not in place(GPU_WORK).label_selector, what="the exclusion to lift")
    assert landed(1) == {"infer-t4"}


def test_guard_readings_reach_the_prometheus_endpoint(t4_guard):
    t4, guard = t4_guard
    ray.get(guard.inject.remote([reading(71.0)]))
    ray.get(guard.tick.remote())
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
