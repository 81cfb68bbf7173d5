"""The measured burst: emergency load jumps 10x while research holds the training GPUs.

On the in-process local multi-role cluster (one node per node type of cluster.yaml, GPUs
simulated), two phases back to back with the same load (see ``workloads.burst.harness``):

* ``baseline`` — the static partition: no broker, the diagnosis lanes only on inference nodes,
  research runs undisturbed on the training nodes;
* ``broker`` — the priority broker watches the lanes: research yields its GPUs to the emergency
  lane in the burst and resumes from its checkpoint after it.

The research run trains on a small synthetic cohort preprocessed by the real DICOM and EMR
pipelines (``workloads.preprocess``) at the start. Prints a table (goals alongside, and the ratio
of the emergency p99 during the burst, broker / baseline), and writes the timeline PNG and the
numbers as JSON when asked.

    python benchmarks/burst.py --png burst.png --json burst.json      # about 6 minutes on 2 cores
    python benchmarks/burst.py --burst-s 45 --phases broker
    python benchmarks/burst.py --phases broker --repeat 5            # medians and spread of 5 bursts
    python benchmarks/burst.py --quiet-s 600                          # 10 quiet minutes: lends must be 0

Loads only 127.0.0.1; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `workloads` when run as a script from anywhere


def training_data(work: Path, *, patients: int, seed: int) -> tuple[Path, Path]:
    """A synthetic cohort through the real preprocessing pipelines: (volume shards, diagnoses table).

    An earlier run's output in ``work`` is reused."""
    from medray.data.cohort import generate_cohort
    from medray.privacy.pseudonym import ensure_key_file, load_key
    from workloads.preprocess.dicom import preprocess_dicom
    from workloads.preprocess.emr import preprocess_emr

    data, labels = work / "prep", work / "prep" / "emr" / "diagnoses.parquet"
    if labels.exists():
        return data, labels
    generate_cohort(work / "cohort", patients=patients, seed=seed, rows=64, slices=12)
    key = load_key(ensure_key_file(work / "deid.key"))
    preprocess_dicom(work / "cohort" / "dicom", work / "prep", key=key)
    preprocess_emr(work / "cohort" / "emr", work / "prep" / "emr", key=key)
    return data, labels


def main(argv: list[str] | None = None) -> int:
    from workloads.burst.harness import BurstPlan

    d = BurstPlan()
    p = argparse.ArgumentParser(prog="python benchmarks/burst.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--phases", nargs="+", choices=("baseline", "broker"), default=["baseline", "broker"])
    p.add_argument("--burst-s", type=float, default=d.burst_s, help="how long the burst lasts")
    p.add_argument("--before-s", type=float, default=d.before_s, help="steady load before the burst")
    p.add_argument("--burst-factor", type=float, default=d.burst_factor)
    p.add_argument("--emergency-rps", type=float, default=d.emergency_rps, help="before and after the burst")
    p.add_argument("--routine-rps", type=float, default=d.routine_rps)
    p.add_argument("--gpu-ms", type=float, default=d.gpu_ms, help="simulated GPU time per served study")
    p.add_argument("--max-replicas", type=int, default=d.max_replicas, help="of the emergency lane")
    p.add_argument("--patients", type=int, default=24, help="research cohort size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="working folder, kept (default: a temporary one); its preprocessed cohort "
                                  "is reused by later runs")
    p.add_argument("--repeat", type=int, default=1, help="run the phases this many times on one cluster; "
                                                          "prints the medians and spread of the goals")
    p.add_argument("--quiet-s", type=float, help="instead: one broker phase of this many seconds at the steady "
                                                   "load, no burst; counts the broker's lends (goal 0)")
    p.add_argument("--png", help="write the timeline figure here")
    p.add_argument("--json", help="write the numbers (and the timelines) here")
    args = p.parse_args(argv)
    plan = replace(d, burst_s=args.burst_s, before_s=args.before_s, burst_factor=args.burst_factor,
                   emergency_rps=args.emergency_rps, routine_rps=args.routine_rps, gpu_ms=args.gpu_ms,
                   max_replicas=args.max_replicas)
    if args.quiet_s:
        plan = replace(plan, before_s=args.quiet_s, burst_s=1.0, burst_factor=1.0)
        args.phases = ["broker"]
    with tempfile.TemporaryDirectory(prefix="medray-burst-") as tmp:
        return run(plan, args, Path(args.work or tmp))


def run(plan, args: argparse.Namespace, work: Path) -> int:  # noqa: ANN001 - BurstPlan, imported late
    from medray.cluster.local import local_cluster
    from workloads.burst.harness import prepare_kit, run_phase
    from workloads.burst.report import format_table, p99_ratio, plot_timeline

    started = time.monotonic()
    runs = []
    with local_cluster(log_to_driver=False):
        print(f"local cluster up in {time.monotonic() - started:.0f} s; preprocessing {args.patients} patients")
        data, labels = training_data(work, patients=args.patients, seed=args.seed)
        kit = prepare_kit(work / "kit", data, labels, plan, seed=args.seed)
        for i in range(args.repeat):
            results = [run_phase(kit, plan, broker=name == "broker", name=name) for name in args.phases]
            runs.append(results)
            print(f"\nrun {i + 1} of {args.repeat}")
            print(format_table(results, plan))
    if args.quiet_s:
        [[quiet]] = runs
        print(f"\nquiet run: {args.quiet_s:.0f} s of steady load, broker lends: {quiet.metrics['lends']} (goal 0)")
    if args.repeat > 1:
        print()
        print(summary_table(runs, plan))
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    results = runs[-1]
    if args.png:
        print(f"timeline: {plot_timeline(results, args.png, plan)}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "plan": asdict(plan), "p99_ratio_broker_over_baseline": p99_ratio(results),
            "runs": [[r.to_dict() for r in rs] for rs in runs]}, indent=1))
        print(f"numbers: {args.json}")
    return 0


# (label, how a broker phase's metrics give it, goal)
GOALS = (
    ("s from burst start to extra replicas serving", lambda m: m["extra_replicas_serving_s"], "<= 10"),
    ("s from burst end to research running again", lambda m: m.get("research_running_again_s"), "<= 60"),
    ("failed emergency requests during the burst", lambda m: m["emergency"]["during"]["failed"], "0"),
    ("research steps redone", lambda m: m.get("steps_redone"), "<= 1 interval"),
    ("lends before the burst", lambda m: m.get("lends_before_burst"), "0"),
    ("emergency p99 ms during the burst", lambda m: m["emergency"]["during"]["p99_ms"], ""),
)


def summary_table(runs, plan) -> str:  # noqa: ANN001 - lists of PhaseResult, a BurstPlan
    """Median and spread (min..max) of each goal over the repeated broker phases."""
    import statistics

    from medray.cli.table import format_table as text_table

    rows = []
    for label, get, goal in GOALS:
        values = [get(r.metrics) for rs in runs for r in rs if r.broker]
        known = [v for v in values if v is not None]
        if not known:
            rows.append([label, "-", "-", f"{len(values) - len(known)} missing", goal])
            continue
        missing = f", {len(values) - len(known)} missing" if len(known) < len(values) else ""
        rows.append([label, f"{statistics.median(known):.1f}", f"{min(known):.1f}..{max(known):.1f}",
                     f"{len(known)} runs{missing}", goal])
    return text_table(["", "median", "spread", "runs", "goal"], rows, align="<>><<",
                      title=f"broker phase over {len(runs)} runs")


if __name__ == "__main__":
    sys.exit(main())
