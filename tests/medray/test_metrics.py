"""medray metrics reach Ray's Prometheus endpoint of the node that recorded them."""

import time
import urllib.request

import ray

from medray.metrics import counter, gauge, histogram


@ray.remote(num_cpus=0)
def _record(value: float) -> str:
    counter("test_events_total", "events seen by the metrics test", ("lane",)).inc(
        1, tags={"lane": "emergency"})
    gauge("test_queue_depth", "queue depth in the metrics test", ("lane",)).set(
        value, tags={"lane": "routine"})
    histogram("test_latency_ms", "latency in the metrics test", (1, 10, 100)).observe(7)
    return ray.get_runtime_context().get_node_id()


def _scrape(node_id: str) -> str:
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_metrics_are_scraped_from_the_node(ray_cluster):
    node_id = ray.get(_record.options(label_selector={"medray.io/role": "prep"}).remote(42))
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = _scrape(node_id)
        if "medray_test_queue_depth" in text and "medray_test_latency_ms" in text:
            break
        time.sleep(2)
    lines = [line for line in text.splitlines() if line.startswith("ray_medray_test_") or
             line.startswith("medray_test_")]
    assert any("test_events_total" in line and 'lane="emergency"' in line for line in lines), lines
    assert any("test_queue_depth" in line and line.rstrip().endswith("42.0") for line in lines), lines
    assert any("test_latency_ms_bucket" in line for line in lines), lines
