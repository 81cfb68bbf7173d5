"""The serving benchmark end to end, briefly, on a cluster of its own (the benchmark starts one): the
service answers through its one URL, the HAProxy front door (medray.cluster.ingress), whose CPU the
breakdown shows beside the replicas'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(600)
def test_the_benchmark_measures_the_default_front_door(tmp_path):
    out = tmp_path / "load.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_") and k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--replicas", "2",
         "--concurrency", "4", "--seconds", "2", "--warmup", "1", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report["medray_targets"]) == 1, report["medray_targets"]  # one URL for clinics
    medray = next(r for r in report["results"] if r["server"] == "medray")
    assert medray["requests"] > 0 and medray["errors"] == 0, medray
    assert "haproxy" in report["cpu_ms_per_answer"]["medray c=4"], report["cpu_ms_per_answer"]
