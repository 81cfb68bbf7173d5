"""The burst's report: the phases side by side as a table with the goals, and their timeline figure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medray.cli import table
from medray.demo import figures
from workloads.burst.harness import BurstPlan, PhaseResult

__all__ = ["format_table", "p99_ratio", "plot_timeline"]


def _kind(result: PhaseResult) -> str:
    return "priority broker" if result.broker else "static partition"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _s(value: float | None, never: str = "never") -> str:
    return never if value is None else f"{value:.1f}"


def _emergency(result: PhaseResult, window: str, key: str) -> Any:
    return result.metrics["emergency"][window][key]


def format_table(results: Sequence[PhaseResult], plan: BurstPlan) -> str:
    """The phases side by side, with the goals; a ratio column when a baseline and a broker phase ran."""
    names = [f"{r.name} ({_kind(r)})" for r in results]
    rows: list[tuple[str, list[str], str]] = []

    def row(label: str, cell: Callable[[PhaseResult], str], goal: str = "") -> None:
        rows.append((label, [cell(r) for r in results], goal))

    def lat(window: str) -> Callable[[PhaseResult], str]:
        return lambda r: f"{_ms(_emergency(r, window, 'p50_ms'))} / {_ms(_emergency(r, window, 'p99_ms'))}"

    def before_during(key: str) -> Callable[[PhaseResult], str]:
        return lambda r: f"{_emergency(r, 'before', key)} / {_emergency(r, 'during', key)}"

    row("lends before the burst (start-up noise)",
        lambda r: str(r.metrics.get("lends_before_burst", 0)) if r.broker else "-", "0")
    row("s from burst start to the broker's lend decision", lambda r: _s(r.metrics.get("lend_s"), "-"))
    row("s from burst start to extra replicas placed",
        lambda r: _s(r.metrics.get("extra_replicas_placed_s"), "-"))
    row("s from burst start to extra replicas serving",
        lambda r: _s(r.metrics["extra_replicas_serving_s"]), "<= 10")
    row("emergency replicas (most during the burst)", lambda r: str(r.metrics["emergency_replicas_max"]))
    row("emergency p50 / p99 ms before the burst", lat("before"))
    # The p99 goal compares with the static partition: named only when that phase ran.
    row("emergency p50 / p99 ms during the burst", lat("during"),
        "p99 below the static partition's" if any(not r.broker for r in results) else "")
    row("emergency p50 / p99 ms after the burst", lat("after"))
    row("failed emergency requests before / during", before_during("failed"), "0 during")
    row("emergency requests before / during", before_during("requests"))
    row("routine p50 / p99 ms, failed",
        lambda r: f"{_ms(r.metrics['routine']['p50_ms'])} / {_ms(r.metrics['routine']['p99_ms'])}, "
                  f"{r.metrics['routine']['failed']}")
    row("s from burst end to GPUs returned", lambda r: _s(r.metrics.get("returned_s"), "-"))
    row("s from burst end to research running again",
        lambda r: _s(r.metrics.get("research_running_again_s"), "-" if not r.broker else "never"), "<= 60")
    row("research steps redone (checkpoint interval)",
        lambda r: (f"{r.metrics['steps_redone']} ({r.metrics['checkpoint_interval_steps']})"
                   if r.metrics.get("steps_redone") is not None else "-"), "<= 1 interval")
    row("research steps trained during the burst", lambda r: str(r.metrics["research_steps_in_burst"]))
    head = (f"emergency {plan.emergency_rps:g} -> {plan.emergency_rps * plan.burst_factor:g} studies/s for "
            f"{plan.burst_s:g} s (routine {plan.routine_rps:g}/s); simulated GPU {plan.gpu_ms:g} ms per "
            f"study, {plan.step_ms:g} ms per training step; emergency lane {plan.reserved}.."
            f"{plan.max_replicas} replicas")
    text = table.format_table(["", *names, "goal"], [[label, *cells, goal] for label, cells, goal in rows],
                              align="<" + ">" * len(names) + "<", title=head)
    ratio = p99_ratio(results)
    if ratio is not None:
        text += f"\nemergency p99 during the burst, broker / static partition: {ratio:.2f}  (goal < 1)"
    return text


def p99_ratio(results: Sequence[PhaseResult]) -> float | None:
    """Emergency p99 during the burst, broker phase over static-partition phase (None without both)."""
    p99 = {r.broker: r.metrics["emergency"]["during"]["p99_ms"] for r in results}
    if p99.get(True) is None or not p99.get(False):
        return None
    return p99[True] / p99[False]


def plot_timeline(results: Sequence[PhaseResult], path: str | Path, plan: BurstPlan) -> Path:
    """PNG: per phase (columns) the emergency replicas by node type, emergency latency, research steps."""
    types = sorted({t for r in results for s in r.samples for t in s["emergency"]["by_type"]})
    columns: dict[str, list[figures.Panel]] = {}
    for r in results:
        t = [s["t"] for s in r.samples]
        replicas = [figures.Series(name, t, [s["emergency"]["by_type"].get(name, 0) for s in r.samples],
                                   "stack") for name in types]
        replicas.append(figures.Series("pending", t, [s["emergency"]["pending"] for s in r.samples], "step",
                                       "black"))
        latency = []
        for lane, colour in (("routine", "#999999"), ("emergency", "#c44e52")):
            ok = [q for q in r.requests if q["lane"] == lane and q["status"] == 200]
            latency.append(figures.Series(lane, [q["sent"] for q in ok], [q["latency_s"] * 1e3 for q in ok],
                                          colour=colour))
        failed = [q for q in r.requests if q["lane"] == "emergency" and q["status"] != 200]
        if failed:
            latency.append(figures.Series(f"emergency failed ({len(failed)})", [q["sent"] for q in failed],
                                          [q["latency_s"] * 1e3 for q in failed], "crosses", "black"))
        steps = figures.Series("research step", [p["t"] for p in r.progress], [p["step"] for p in r.progress],
                               colour="#4c72b0")
        marks = [(e["t"], e["action"], "#c44e52" if e["action"] == "lend" else "#55a868")
                 for e in r.events if e["action"] in ("lend", "return")]
        columns[f"{r.name}: {_kind(r)}"] = [
            figures.Panel("emergency replicas", replicas, ylim=(0, plan.max_replicas + 0.5), integer=True),
            figures.Panel("latency (ms)", latency, log=True),
            figures.Panel("research step", [steps], marks=marks),
        ]
    return figures.timeline(columns, path, xlabel="seconds since the load started",
                            span=(plan.before_s, plan.burst_end))
