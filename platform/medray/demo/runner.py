"""The end-to-end demo (``medray demo`` / ``make demo``) on the embedded local cluster.

The platform's own stages run first: the node table, one task per role (showing where each one
ran), site pinning, and a synthetic cohort. Workload stages plug in through the entry-point group
``medray.demo_stages`` (``"<order>-<name>" = "module:function"``), so the platform never imports
its workloads. A stage takes the :class:`DemoContext` and returns a short summary dict; later
stages read earlier ones' summaries from ``ctx.results`` (the training stage's ``split`` names the
file of its patient split, so the diagnosis stage sends only held-out patients' studies).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from medray.cluster.node_types import NodeType, load_node_types
from medray.demo.report import write_report
from medray.errors import ConfigError
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile

__all__ = ["DEMO_PATIENTS", "REPORT_ONLY", "STAGE_GROUP", "DemoContext", "run_demo"]

STAGE_GROUP = "medray.demo_stages"
# Big enough for the demo's model to learn to find the nodule and be scored on 60 held-out patients
# (docs/research.md, "Demo stage"); synthesising and preprocessing them takes about 1 minute on 2 cores.
DEMO_PATIENTS = 240
# Summary keys that only the report shows (a table each), not the console's one-line summaries.
REPORT_ONLY = frozenset({"figures", "findings"})
Stage = Callable[["DemoContext"], dict[str, Any]]


@dataclass
class DemoContext:
    """What every stage can use and add to."""

    out: Path
    node_types: list[NodeType]
    patients: int
    seed: int = 0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def cohort(self) -> Path:
        return self.out / "cohort"

    @property
    def registry(self) -> Path:
        return self.out / "registry"

    @property
    def split_file(self) -> Path:
        """The training stage's patient split: JSON ``{"model", "held_out", "train"}``, pseudonyms only."""
        return self.out / "split.json"

    def preprocessed(self, stage: str, *, takes_paths: bool = False) -> tuple[Path, Path]:
        """The preprocessing stage's outputs (the shards' folder, the de-identified diagnoses), for
        ``stage`` (named in the error when that stage has not run; ``takes_paths``: the stage also
        takes ``data=`` and ``labels=``, and the error says so)."""
        for result in self.results.values():
            if "volumes" in result and "emr" in result:
                return Path(result["volumes"]).parent, Path(result["emr"]) / "diagnoses.parquet"
        alternative = " or pass data= and labels=" if takes_paths else ""
        raise ConfigError(f"the {stage} stage needs the preprocessing stage's outputs: run it first{alternative}")

    def say(self, text: str) -> None:
        print(text, flush=True)


def _where() -> dict[str, str]:
    import ray

    labels = ray.get_runtime_context().get_node_labels()
    return {k.removeprefix("medray.io/"): v for k, v in labels.items() if k.startswith("medray.io/")}


def stage_cluster(ctx: DemoContext) -> dict[str, Any]:
    """Show every node of the local cluster with its role and GPU health."""
    from medray.cli.status import format_nodes
    from medray.cluster.status import node_rows

    rows = node_rows()
    ctx.say(format_nodes(rows))
    (ctx.out / "nodes.json").write_text(json.dumps(rows, indent=2))
    return {"nodes": len(rows), "alive": sum(r["alive"] for r in rows)}


def stage_placement(ctx: DemoContext) -> dict[str, Any]:
    """Run one task per role through medray.scheduling and show where each one landed."""
    import ray

    where = ray.remote(_where)
    profiles = {
        "prep": WorkloadProfile(roles=("prep",), num_cpus=1, storage="nvme"),
        "infer": WorkloadProfile(roles=("infer", "train"), num_cpus=0.5, num_gpus=0.25,
                                 gpu_memory_gb=4, latency="realtime"),
        "train": WorkloadProfile(roles=("train",), num_cpus=1, num_gpus=1),
        # A model that needs 60 GB per GPU: only the H100 (80 GB) fits, the A100 (40 GB) does not.
        "train (60 GB per GPU)": WorkloadProfile(roles=("train",), num_cpus=1, num_gpus=1, gpu_memory_gb=60),
        "edge (site partner-a)": WorkloadProfile(roles=("edge",), num_cpus=1, site="partner-a"),
        "coordinator": WorkloadProfile(roles=("coordinator",), num_cpus=0.1),
    }
    landed = {}
    lines = [f"{'work':24} {'chosen type':16} {'fallbacks':30} ran on"]
    for label, profile in profiles.items():
        placement = place(profile, ctx.node_types)
        node = ray.get(where.options(**placement.ray_options()).remote())
        fallbacks = ",".join(t.name for t in placement.candidates[1:]) or "-"
        lines.append(f"{label:24} {placement.node_type.name:16} {fallbacks:30} "
                     f"{node.get('node-type')} (role={node.get('role')}, site={node.get('site')})")
        landed[label] = node.get("node-type")
    ctx.say("\n".join(lines))
    return {"where": landed}


def stage_synth(ctx: DemoContext) -> dict[str, Any]:
    """Write the synthetic cohort (DICOM + EMR) that later stages use."""
    from medray.data.cohort import generate_cohort

    # Writing DICOM is CPU-bound (pydicom) and the cluster idles meanwhile: one process per core.
    summary = generate_cohort(ctx.cohort, patients=ctx.patients, seed=ctx.seed, workers=os.cpu_count() or 1)
    ctx.say(f"cohort: {summary.patients} patients ({summary.with_nodule} with a nodule), "
            f"{summary.dicom_files} DICOM files -> {ctx.cohort}")
    return {"patients": summary.patients, "with_nodule": summary.with_nodule,
            "dicom_files": summary.dicom_files}


_PLATFORM_STAGES: list[tuple[str, Stage]] = [
    ("00-cluster", stage_cluster),
    ("01-placement", stage_placement),
    ("02-synth", stage_synth),
]


def _stages(only: set[str] | None) -> list[tuple[str, Stage]]:
    plugged = [(ep.name, ep.load) for ep in entry_points(group=STAGE_GROUP)]
    stages: list[tuple[str, Stage]] = list(_PLATFORM_STAGES)
    stages += [(name, load()) for name, load in sorted(plugged)]
    if only:
        stages = [(n, s) for n, s in stages if n.split("-", 1)[-1] in only or n in only]
    return sorted(stages, key=lambda s: s[0])


def run_demo(
    out: str | Path = "medray-demo",
    *,
    config: str | Path | None = None,
    patients: int = DEMO_PATIENTS,
    seed: int = 0,
    only: set[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Start the local cluster, run every stage in order, print and return a summary."""
    from medray.cluster.local import local_cluster

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out=out, node_types=load_node_types(config), patients=patients, seed=seed)
    t0 = time.monotonic()
    import ray.data

    # The demo prints its own tables; workers' output and Ray Data's progress stay in the logs.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with local_cluster(config, log_to_driver=False):
        for name, stage in _stages(only):
            ctx.say(f"\n== {name} ==")
            start = time.monotonic()
            ctx.results[name] = {**stage(ctx), "seconds": round(time.monotonic() - start, 1)}
    ctx.say("\n== summary ==")
    for name, result in ctx.results.items():
        shown = {k: v for k, v in result.items() if k not in REPORT_ONLY}
        ctx.say(f"{name:18} {json.dumps(shown, default=str)}")
    (out / "summary.json").write_text(json.dumps(ctx.results, indent=2, default=str))
    report = write_report(out, ctx.results)
    ctx.say(f"demo finished in {time.monotonic() - t0:.0f} s; report {report.resolve()}")
    return ctx.results
