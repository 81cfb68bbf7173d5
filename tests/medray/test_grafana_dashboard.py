"""deploy/grafana/medray-dashboard.json is a valid dashboard whose queries name metrics that exist.

Every ``ray_medray_*`` name in a panel's PromQL must be created somewhere in platform/ or workloads/
(``counter(…)``, ``gauge(…)``, ``histogram(…)``), and every other ``ray_*`` name must appear in Ray's
own sources, so a renamed metric breaks this test instead of silently emptying a panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import ray

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "medray-dashboard.json"
RAY = Path(ray.__file__).parent
# Where Ray creates (reporter agent, Serve) and charts (its own dashboards) the metrics we use.
RAY_SOURCES = ("dashboard/modules/reporter", "dashboard/modules/metrics/dashboards", "serve/_private")

_METRIC_CALL = re.compile(r"\b(?:counter|gauge|histogram)\(\s*(f?)\"([^\"]+)\"")
_PROMQL_NAME = re.compile(r"\bray_[a-z0-9_]+")
# What Prometheus exposition appends: counters get _total, histograms _bucket/_sum/_count.
_SUFFIX = re.compile(r"_(?:total|bucket|sum|count)$")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p["targets"]]


def _defined_medray_names() -> list[re.Pattern[str]]:
    """A pattern per metric created in the source; an f-string's placeholder matches a literal of its file."""
    patterns = []
    for path in [*(REPO / "platform").rglob("*.py"), *(REPO / "workloads").rglob("*.py")]:
        text = path.read_text()
        literals = "|".join(sorted({re.escape(s) for s in re.findall(r"\"([a-z0-9_]+)\"", text)}))
        for is_f, name in _METRIC_CALL.findall(text):
            parts = re.split(r"\{[^}]*\}", name) if is_f else [name]
            placeholder = f"(?:{literals})"
            patterns.append(re.compile(placeholder.join(map(re.escape, parts)) + "$"))
    return patterns


def _exported_as(name: str) -> set[str]:
    """The source names a Prometheus series name may come from (with and without its suffix)."""
    return {name, _SUFFIX.sub("", name)}


def test_dashboard_structure(dashboard: dict):
    assert dashboard["title"] and dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = _panels(dashboard)
    assert len(panels) >= 10
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"]), "panel ids must be unique"
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert _PROMQL_NAME.search(t["expr"]), t["expr"]


def test_dashboard_covers_medray_metric_families(dashboard: dict):
    text = " ".join(_exprs(dashboard))
    for family in ("diagnosis_latency_ms_bucket", "diagnosis_requests", "gpu_temperature_c", "gpu_power_w",
                   "gpu_memory_used_mib", "guard_drained", "broker_events_total", "broker_lane_pending",
                   "broker_lane_borrowed", "preprocess_quarantined_files"):
        assert f"ray_medray_{family}" in text, family


def test_every_medray_metric_in_the_dashboard_exists_in_the_source(dashboard: dict):
    defined = _defined_medray_names()
    assert defined, "no counter()/gauge()/histogram() calls found: has medray.metrics moved?"
    used = {n.removeprefix("ray_medray_") for e in _exprs(dashboard) for n in _PROMQL_NAME.findall(e)
            if n.startswith("ray_medray_")}
    missing = sorted(n for n in used if not any(p.match(c) for p in defined for c in _exported_as(n)))
    assert not missing, f"dashboard queries metrics no code creates: {missing}"


def test_every_ray_metric_in_the_dashboard_exists_in_ray(dashboard: dict):
    sources = "\n".join(p.read_text(errors="replace") for d in RAY_SOURCES for p in (RAY / d).rglob("*.py"))
    used = {n for e in _exprs(dashboard) for n in _PROMQL_NAME.findall(e) if not n.startswith("ray_medray_")}
    assert used
    missing = sorted(n for n in used if not any(c.removeprefix("ray_") in sources for c in _exported_as(n)))
    assert not missing, f"dashboard queries Ray metrics that Ray {ray.__version__} does not define: {missing}"
