"""The simulator against a measured run: the local cluster's burst benchmark, simulated and compared.

``benchmarks/sim/local_burst.yaml`` is ``benchmarks/burst.py``'s scenario on ``medray up --local``'s
nodes (one per node type). :func:`calibrate` simulates it with medray's policy and compares the burst's figures with
:data:`RECORDED`, the benchmark's measured medians in docs/benchmarks.md; the check passes when the
reallocation time (burst start to borrowed replicas serving) and the emergency p99 during the burst
are both within ``tolerance`` (25%) of the measured ones. The replica start and the run's release are
inputs (taken from the same run); the lend decision, the queue and so the p99 come out of the
simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medray.errors import ConfigError
from medray.sim.engine import DayLog, simulate
from medray.sim.policies import MEDRAY
from medray.sim.trace import SimConfig, load_config

__all__ = ["BurstFigures", "RECORDED", "Comparison", "burst_figures", "calibrate"]


@dataclass(frozen=True)
class BurstFigures:
    """Seconds from the burst's start to the broker's lend, to borrowed replicas placed and serving;
    the emergency p99 of the burst's arrivals; emergency studies refused."""

    lend_s: float | None
    placed_s: float | None
    serving_s: float | None
    p99_s: float
    refused: int


# docs/benchmarks.md, "Burst", the broker phase five times, 2026-12-02 16:05-16:22 (this broker's
# code, which lends on queue evidence): medians of lend 4.1 s, placed 6.8 s, serving 21.4 s, emergency
# p99 during the burst 10,161.8 ms; 0 of 300 failed in each run.
RECORDED = BurstFigures(lend_s=4.1, placed_s=6.8, serving_s=21.4, p99_s=10.1618, refused=0)


@dataclass(frozen=True)
class Comparison:
    """Simulated against recorded figures; ``ok`` when reallocation time and p99 are within ``tolerance``."""

    simulated: BurstFigures
    recorded: BurstFigures
    tolerance: float

    def error(self, name: str) -> float | None:
        """(simulated - recorded) / recorded for figure ``name`` (None when either is missing)."""
        sim, rec = getattr(self.simulated, name), getattr(self.recorded, name)
        return None if sim is None or not rec else (sim - rec) / rec

    @property
    def ok(self) -> bool:
        errors = [self.error("serving_s"), self.error("p99_s")]
        return all(e is not None and abs(e) <= self.tolerance for e in errors)

    def lines(self) -> list[str]:
        """A small table: figure, simulated, recorded, error; the checked ones starred."""
        from medray.cli.table import format_table

        rows = []
        for name, label in (("lend_s", "s to the lend decision"), ("placed_s", "s to borrowed replicas placed"),
                            ("serving_s", "s to borrowed replicas serving *"), ("p99_s", "emergency p99 s, burst *"),
                            ("refused", "emergency refused")):
            sim, rec, err = getattr(self.simulated, name), getattr(self.recorded, name), self.error(name)
            rows.append([label, "-" if sim is None else f"{sim:.2f}", f"{rec:.2f}",
                         "-" if err is None else f"{100 * err:+.0f}%"])
        verdict = "within" if self.ok else "NOT within"
        return [format_table(["burst figure", "simulated", "recorded", "error"], rows, align="<>>>"),
                f"* checked: {verdict} {100 * self.tolerance:.0f}% of the recorded run"]


def burst_figures(log: DayLog, config: SimConfig) -> BurstFigures:
    """The burst's figures from a simulated run of ``config`` (its first lane with a burst)."""
    lane = next((i for i, t in enumerate(config.lanes) if t.bursts), None)
    if lane is None:
        raise ConfigError("the trace config has no lane with a burst to measure")
    burst = config.lanes[lane].bursts[0]
    start, end = burst.start_s, burst.start_s + burst.duration_s
    if start % log.bin_s or end % log.bin_s:
        raise ConfigError(f"the burst ({start:g}..{end:g} s) must start and end on a bin edge (bin_s {log.bin_s:g})")

    def first(action: str) -> float | None:
        times = [t for t, what, _ in log.events if what == action and t >= start]
        return min(times) - start if times else None

    lends = [e.at for e in log.broker_events if e.action == "lend" and e.at >= start]
    during = [x for b in range(int(start // log.bin_s), int(end // log.bin_s)) for x in log.latencies[lane][b]]
    return BurstFigures(lend_s=min(lends) - start if lends else None, placed_s=first("borrowed-placed"),
                        serving_s=first("borrowed-serving"), p99_s=float(np.percentile(during, 99)),
                        refused=log.rejected[lane] + log.timed_out[lane] + log.failed[lane])


def calibrate(path: str | Path, *, tolerance: float = 0.25) -> Comparison:
    """Simulate the local burst benchmark's trace (``benchmarks/sim/local_burst.yaml``) with medray's
    policy and compare it with :data:`RECORDED`."""
    config = load_config(path)
    return Comparison(burst_figures(simulate(config, MEDRAY), config), RECORDED, tolerance)
