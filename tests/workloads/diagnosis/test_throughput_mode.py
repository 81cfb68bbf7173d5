"""Serve's throughput-optimized mode (direct ingress): the service answers on every ingress replica's
own port, found through ``http_targets``. Runs the serving benchmark briefly on a cluster of its own,
since the mode is read by every Serve process when the cluster starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(600)
def test_throughput_optimized_service_answers_on_each_ingress_replica(tmp_path):
    out = tmp_path / "load.json"
    env = {**os.environ, "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--throughput-optimized", "--replicas", "2",
         "--concurrency", "4", "--seconds", "2", "--warmup", "1", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    ports = {urlparse(u).port for u in report["medray_targets"]}
    assert len(ports) == 2, report["medray_targets"]  # one per ingress replica, none of them a proxy
    medray = next(r for r in report["results"] if r["server"] == "medray")
    assert medray["requests"] > 0 and medray["errors"] == 0, medray
