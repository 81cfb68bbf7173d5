"""What a simulated day measured, per policy: GPU busy share, latency by class, research, preprocessing, cost.

:func:`summarize` turns a :class:`~medray.sim.engine.DayLog` into a :class:`DaySummary`; :func:`table`
prints policies side by side with ratios to a baseline; :func:`plot` draws them with
:func:`medray.demo.figures.timeline` (the demo report's style), one column per policy.

"GPU busy" counts useful work only: a GPU is busy while a replica runs a study on it or a research
job trains on it; a replica waiting for requests, a start, a restart or a release are idle time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medray.sim.engine import DayLog

__all__ = ["LaneSummary", "DaySummary", "summarize", "table", "plot"]


@dataclass(frozen=True)
class LaneSummary:
    """One clinical lane over the run: latency percentiles of answered studies, counts, the SLO by bin.

    ``p99_by_bin_s``: the p99 of each time bin's arrivals (NaN where none arrived); ``bins_over_slo``:
    bins whose p99 is above ``slo_s``; ``refused``: answered 503 (queue full or timed out) or never
    answered because their GPU was lost.
    """

    name: str
    priority: str
    site: str | None
    slo_s: float
    arrivals: int
    served: int
    refused: int
    p50_s: float
    p99_s: float
    p99_by_bin_s: tuple[float, ...]
    bins_over_slo: int


@dataclass(frozen=True)
class DaySummary:
    """One policy's day (see the module docstring for what counts as busy)."""

    policy: str
    duration_s: float
    bin_s: float
    gpu_busy_pct: float
    busy_pct_by_kind: dict[str, float]
    busy_pct_by_kind_bin: dict[str, tuple[float, ...]]
    busy_pct_by_role_bin: dict[str, tuple[float, ...]]
    lanes: tuple[LaneSummary, ...]
    research_done_gpu_h: float
    research_lost_preempt_gpu_h: float
    research_lost_preempt_pct: float
    research_lost_fault_gpu_h: float
    research_jobs_finished: int
    prep_makespan_s: float | None
    cost_per_day: float
    cost_per_busy_gpu_h: float
    lends: int
    drains: int
    wall_s: float
    cpu_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _lane(log: DayLog, i: int) -> LaneSummary:
    bins = log.latencies[i]
    every = [x for b in bins for x in b]
    p99s = tuple(_pct(b, 99) for b in bins[:-1])  # the last bin holds the drain after the day
    slo = log.lane_slo_s[i]
    return LaneSummary(
        name=log.lanes[i], priority=log.lane_priority[i], site=log.lane_sites[i], slo_s=slo, arrivals=log.arrivals[i],
        served=log.served[i], refused=log.rejected[i] + log.timed_out[i] + log.failed[i],
        p50_s=_pct(every, 50), p99_s=_pct(every, 99), p99_by_bin_s=p99s,
        bins_over_slo=sum(1 for p in p99s if p > slo),
    )


def summarize(log: DayLog) -> DaySummary:
    """The figures of one simulated run."""
    busy, gpus = log.busy_gpu_s, np.array(log.kind_gpus)
    n_bins = busy.shape[1]
    span = np.full(n_bins, log.bin_s)
    span[-1] = log.duration_s - log.bin_s * (n_bins - 1)
    by_bin = {k: tuple((100.0 * busy[i] / (gpus[i] * span)).round(2).tolist()) for i, k in enumerate(log.kinds)}
    by_role = {}
    for role in dict.fromkeys(log.kind_roles):
        rows = [i for i, r in enumerate(log.kind_roles) if r == role]
        by_role[role] = tuple((100.0 * busy[rows].sum(axis=0) / (gpus[rows].sum() * span)).round(2).tolist())
    busy_h = float(busy.sum()) / 3600.0
    done, lost = log.research_done_gpu_s / 3600.0, log.research_lost_preempt_gpu_s / 3600.0
    actions = [e.action for e in log.broker_events]
    return DaySummary(
        policy=log.policy, duration_s=log.duration_s, bin_s=log.bin_s,
        gpu_busy_pct=round(100.0 * float(busy.sum()) / (float(gpus.sum()) * log.duration_s), 2),
        busy_pct_by_kind={k: round(100.0 * float(busy[i].sum()) / (gpus[i] * log.duration_s), 2)
                          for i, k in enumerate(log.kinds)},
        busy_pct_by_kind_bin=by_bin, busy_pct_by_role_bin=by_role,
        lanes=tuple(_lane(log, i) for i in range(len(log.lanes))),
        research_done_gpu_h=round(done, 2), research_lost_preempt_gpu_h=round(lost, 2),
        research_lost_preempt_pct=round(100.0 * lost / (done + lost), 2) if done + lost else 0.0,
        research_lost_fault_gpu_h=round(log.research_lost_fault_gpu_s / 3600.0, 2),
        research_jobs_finished=log.research_jobs_finished, prep_makespan_s=log.prep_makespan_s,
        cost_per_day=round(log.cost_per_day, 2),
        cost_per_busy_gpu_h=round(log.cost_per_day / busy_h, 2) if busy_h else float("inf"),
        lends=actions.count("lend"), drains=sum(1 for e in log.events if e[1] == "drain"),
        wall_s=round(log.wall_s, 2), cpu_s=round(log.cpu_s, 2),
    )


def _fmt(v: float | None, spec: str) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return format(v, spec)


def _rows(s: DaySummary) -> list[tuple[str, float | None, str]]:
    rows: list[tuple[str, float | None, str]] = [("GPU busy % (all GPUs, the day)", s.gpu_busy_pct, ".1f")]
    rows += [(f"  GPU busy % {kind}", pct, ".1f") for kind, pct in s.busy_pct_by_kind.items()]
    for lane in s.lanes:
        rows += [(f"{lane.name} ({lane.priority}) p50 s", lane.p50_s, ".2f"),
                 (f"{lane.name} p99 s (SLO {lane.slo_s:g})", lane.p99_s, ".2f"),
                 (f"{lane.name} bins with p99 over SLO", lane.bins_over_slo, "d"),
                 (f"{lane.name} refused of {lane.arrivals}", lane.refused, "d")]
    rows += [("research GPU-h done", s.research_done_gpu_h, ".1f"),
             ("research GPU-h lost to preemption", s.research_lost_preempt_gpu_h, ".1f"),
             ("research % lost to preemption (goal <= 5)", s.research_lost_preempt_pct, ".2f"),
             ("research GPU-h lost to GPU faults", s.research_lost_fault_gpu_h, ".1f"),
             ("research jobs finished", s.research_jobs_finished, "d"),
             ("preprocessing makespan s", s.prep_makespan_s, ".0f"),
             ("cost per day USD (the fleet, always on)", s.cost_per_day, ",.0f"),
             ("cost per busy GPU-hour USD", s.cost_per_busy_gpu_h, ".2f"),
             ("broker lends", s.lends, "d"),
             ("guard drains", s.drains, "d"),
             ("simulation CPU s", s.cpu_s, ".1f")]
    return rows


def table(summaries: Sequence[DaySummary], *, baseline: str = "static", markdown: bool = False) -> str:
    """Policies side by side, then each other policy's ratio to ``baseline`` (of the values shown: no
    ratio to a shown 0); through :func:`medray.cli.table.format_table` (``markdown``: a pipe table)."""
    from medray.cli.table import format_table

    base = next((s for s in summaries if s.policy == baseline), None)
    others = [s for s in summaries if base is not None and s is not base]
    shown = {s.policy: [(name, _fmt(v, spec)) for name, v, spec in _rows(s)] for s in summaries}
    rows = []
    for r, (name, _) in enumerate(shown[summaries[0].policy]):
        cells = [name, *(shown[s.policy][r][1] for s in summaries)]
        for s in others:
            v, b = (shown[x.policy][r][1].replace(",", "") for x in (s, base))  # type: ignore[union-attr]
            cells.append(f"{float(v) / float(b):.2f}x" if "-" not in (v, b) and float(b) else "-")
        rows.append(cells)
    headers = ["measurement", *(s.policy for s in summaries), *(f"{s.policy}/{baseline}" for s in others)]
    return format_table(headers, rows, align="<" + ">" * (len(headers) - 1), rule=True, markdown=markdown)


def plot(summaries: Sequence[DaySummary], path: str | Path, *, title: str = "",
         span: tuple[float, float] | None = None) -> Path:
    """One column per policy: GPU busy % by role and the p99 of the main site's lanes, per time bin; returns
    ``path`` (the table has every node type and lane).

    ``span`` (start, end) is shaded (the mass-casualty hour), in hours for hourly bins, else seconds.
    """
    from medray.demo.figures import Panel, Series, timeline

    hours = bool(summaries) and summaries[0].bin_s >= 3600
    columns = {}
    for s in summaries:
        unit = s.bin_s / 3600.0 if hours else s.bin_s
        t = [i * unit for i in range(len(next(iter(s.busy_pct_by_kind_bin.values()))))]
        busy = Panel(ylabel="GPU busy %", ylim=(0, 105),
                     series=[Series(f"{role} GPUs", t, list(v), style="step")
                             for role, v in s.busy_pct_by_role_bin.items()])
        main = [lane for lane in s.lanes if lane.site is None] or list(s.lanes)
        lat = Panel(ylabel="p99 latency s", log=True,
                    series=[*(Series(lane.name, t, list(lane.p99_by_bin_s)) for lane in main),
                            *(Series(f"{lane.name} SLO", t, [lane.slo_s] * len(t), style="step")
                              for lane in s.lanes if lane.priority == "emergency")])
        columns[f"{s.policy}: {s.gpu_busy_pct:.0f}% busy"] = [busy, lat]
    return timeline(columns, path, xlabel="hour" if hours else "seconds", span=span, title=title,
                    size_px=(360 * len(columns), 560))
