"""The demo's stage ``40-burst``: a short burst with the priority broker on the demo cluster."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medray.demo.runner import DemoContext
from workloads.burst.harness import DEMO_PLAN, BurstPlan, prepare_kit, run_phase
from workloads.burst.report import format_table, plot_timeline

__all__ = ["stage"]



# The burst's research run trains on this many of the cohort's patients: what matters is that it
# checkpoints every few seconds and yields at once, not what it learns (the training stage learns).
BURST_PATIENTS = 48


def research_slice(data: Path, out: Path, patients: int = BURST_PATIENTS) -> Path:
    """The first ``patients`` rows of the volume shards under ``data``, as one shard under ``out``."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from medray.data.shards import VOLUMES_DIR, shard_files

    files = shard_files(data)
    table = pads.dataset([str(f) for f in files], format="parquet").head(patients)
    dest = out / VOLUMES_DIR
    dest.mkdir(parents=True, exist_ok=True)
    # The shards' own schema (with the input spec in its metadata) over the rows taken.
    pq.write_table(table.replace_schema_metadata(pq.read_schema(files[0]).metadata), dest / "part-00000.parquet")
    return out


def stage(ctx: DemoContext, *, plan: BurstPlan = DEMO_PLAN) -> dict[str, Any]:
    """A short burst with the priority broker on the demo cluster: the emergency lane borrows the
    research run's GPUs and gives them back; a table and a timeline figure."""
    from medray.demo.report import FIGURES_DIR, figure_entry

    data, labels = ctx.preprocessed("burst")
    data = research_slice(data, ctx.out / "burst" / "research-data")
    kit = prepare_kit(ctx.out / "burst", data, labels, plan, seed=ctx.seed)
    result = run_phase(kit, plan, broker=True, name="burst", say=ctx.say)
    ctx.say(format_table([result], plan))
    png = plot_timeline([result], ctx.out / FIGURES_DIR / "burst-timeline.png", plan)
    (kit.work / "burst.json").write_text(json.dumps({"plan": asdict(plan), "phases": [result.to_dict()]}))
    m = result.metrics
    # Each lend and give-back with its reason, as the broker recorded it.
    decisions = [{"t_s": round(e["t"], 1), "action": e["action"], "subject": e["subject"], "reason": e["reason"]}
                 for e in result.events if e["action"] in ("lend", "yielded", "resized", "return", "unmet")]
    ctx.say(f"broker decisions (s after the load started; the burst ran from {plan.before_s:g} to "
            f"{plan.burst_end:g} s):")
    for d in decisions:
        ctx.say(f"  {d['t_s']:+7.1f} s  {d['action']:8} {d['subject']}: {d['reason']}")
    return {
        "extra_replicas_serving_s": m["extra_replicas_serving_s"],
        "emergency_replicas_max": m["emergency_replicas_max"],
        "emergency_p99_ms_before": m["emergency"]["before"]["p99_ms"],
        "emergency_p99_ms_during": m["emergency"]["during"]["p99_ms"],
        "emergency_failed_during": m["emergency"]["during"]["failed"],
        "research_running_again_s": m.get("research_running_again_s"),
        "steps_redone": m.get("steps_redone"),
        "lends_before_burst": m.get("lends_before_burst"),
        "broker_decisions": decisions,
        "figures": [figure_entry(ctx.out, png, "The burst: emergency replicas by node type (top), latency "
                                               "(middle) and research steps (bottom); the burst is shaded")],
    }
