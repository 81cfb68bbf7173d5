"""Placement in the real path: does work land on the cheapest feasible node type that has room?

On the in-process local multi-role cluster (one node per node type of cluster.yaml, GPUs simulated),
each round places the three workload families the way the workloads do, and a baseline the way
round 1 did (``medray.io/node-type in(...)`` over all types of the role):

* **preprocessing**: Ray Data ``map_batches`` tasks with the pipelines' ``map_options`` (8 tasks of
  0.5 s, 4 at a time, on cpu-prep's 2 and bulk-prep's 2 CPUs);
* **diagnosis**: three 1-GPU real-time replicas (actors) with the lanes' placement;
* **training**: a one-worker and a two-worker Ray Train group (placement groups) with
  ``Placement.group_selectors``.

A unit counts as **on the cheapest type with room** when, at the moment it started, no type before
its own in the placement's cost order had a free slot. Then a guard trips on a second T4 node added
for it: the round counts what new GPU work and placement-group bundles land there (goal 0).

    python benchmarks/placement.py --rounds 5        # about 3 minutes on 2 cores

Prints one table: per family the share on the cheapest type with room, median and spread over the
rounds, for medray and the baseline, and the drain's figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `workloads` when run as a script from anywhere

TYPE = "medray.io/node-type"


def _grouped(placement: Any) -> dict[str, Any]:
    """Round 1's options: every type of the preferred role in one ``in(...)`` selector."""
    role = placement.node_type.role
    own = [t.name for t in placement.candidates if t.role == role]
    options = placement.ray_options()
    options["label_selector"] = {**options["label_selector"],
                                 TYPE: own[0] if len(own) == 1 else f"in({','.join(own)})"}
    rest = [f for f in options.get("fallback_strategy", [])
            if next(t for t in placement.candidates if t.name == f["label_selector"][TYPE]).role != role]
    if rest:
        options["fallback_strategy"] = rest
    else:
        options.pop("fallback_strategy", None)
    return options


def on_cheapest_with_room(units: list[tuple[float, float, str]], order: list[str], slots: dict[str, int]) -> float:
    """Share of ``(start, end, node type)`` units started when no type before theirs had a free slot."""
    good = 0
    for i, (start, _end, node_type) in enumerate(units):
        busy = {t: sum(1 for j, (s, e, u) in enumerate(units) if j != i and u == t and s <= start < e)
                for t in order}
        earlier = order[:order.index(node_type)]
        good += all(busy[t] >= slots[t] for t in earlier)
    return good / len(units) if units else float("nan")


def _slots(placement: Any, per_unit: dict[str, float]) -> dict[str, int]:
    from medray.scheduling.load import cluster_load

    load = cluster_load()
    slots = {}
    for t in placement.candidates:
        room = 0
        for n in load.nodes:
            if n.node_type != t.name:
                continue
            fit = [n.total_cpus / per_unit["CPU"]] if per_unit.get("CPU") else []
            fit += [n.total_gpus / per_unit["GPU"]] if per_unit.get("GPU") else []
            room += int(min(fit, default=0) + 1e-9)
        slots[t.name] = room
    return slots


def _idle(timeout_s: float = 60.0) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        free, total = ray.available_resources(), ray.cluster_resources()
        if free.get("GPU", 0) >= total.get("GPU", 0) and free.get("CPU", 0) >= total.get("CPU", 0) - 0.01:
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.2)


def prep_units(grouped: bool) -> tuple[list[tuple[float, float, str]], list[str], dict[str, int]]:
    import ray
    import ray.data

    from workloads.preprocess.runs import PREP_PROFILE, map_options, placement

    chosen = placement(PREP_PROFILE)
    options = map_options(chosen, 4)
    if grouped:
        options = {**_grouped(chosen), "compute": options["compute"]}

    def work(batch: dict[str, Any]) -> dict[str, Any]:
        start = time.time()
        time.sleep(0.5)
        node_type = ray.get_runtime_context().get_node_labels()[TYPE]
        return {"start": [start], "end": [time.time()], "type": [node_type]}

    rows = ray.data.range(8, override_num_blocks=8).map_batches(work, batch_size=1, **options).take_all()
    order = [t.name for t in chosen.candidates]
    return ([(r["start"], r["end"], r["type"]) for r in rows], order,
            _slots(chosen, {"CPU": PREP_PROFILE.num_cpus}))


def serve_units(grouped: bool) -> tuple[list[tuple[float, float, str]], list[str], dict[str, int]]:
    import ray

    from medray.scheduling.options import place
    from medray.scheduling.placement import WorkloadProfile

    chosen = place(WorkloadProfile(roles=("infer", "train"), num_cpus=0, num_gpus=1, latency="realtime"))
    options = _grouped(chosen) if grouped else chosen.ray_options()

    @ray.remote
    class Replica:
        def where(self) -> tuple[float, str]:
            return time.time(), ray.get_runtime_context().get_node_labels()[TYPE]

    units = []
    replicas = []
    for _ in range(3):  # one after the other, as an autoscaler adds them
        replica = Replica.options(**options).remote()
        replicas.append(replica)
        units.append(ray.get(replica.where.remote(), timeout=60))
    end = time.time()
    for r in replicas:
        ray.kill(r)
    order = [t.name for t in chosen.candidates]
    return [(s, end, t) for s, t in units], order, _slots(chosen, {"GPU": 1})


def train_units(grouped: bool) -> tuple[list[tuple[float, float, str]], list[str], dict[str, int]]:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from medray.scheduling.load import cluster_load
    from workloads.research.placement import place_workers

    workers = place_workers(cpus_per_worker=1, gpus_per_worker=1)
    chosen = workers.placement
    order = [t.name for t in chosen.candidates]

    @ray.remote(num_cpus=0)
    def where() -> tuple[float, str]:
        return time.time(), ray.get_runtime_context().get_node_labels()[TYPE]

    units = []
    for count in (1, 2):
        _idle()
        if grouped:
            selectors = [{**chosen.label_selector, TYPE: f"in({','.join(order)})"}] * count
        else:
            selectors = chosen.group_selectors(count, cluster_load())
        pg = placement_group([{"CPU": 1, "GPU": 1}] * count, bundle_label_selector=selectors)
        ray.get(pg.ready(), timeout=60)
        found = ray.get([where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=i)).remote() for i in range(count)], timeout=60)
        end = time.time()
        remove_placement_group(pg)
        start = min(s for s, _ in found)
        units.append([(start, end, t) for _, t in found])
    slots = _slots(chosen, {"CPU": 1, "GPU": 1})
    # Each group is judged on its own (the first one has ended before the second starts).
    return [u for group in units for u in group], order, slots


def drain_round(cluster: Any) -> dict[str, Any]:
    """Trip a guard on an added T4 node: seconds until Ray drains it, new GPU work and bundles there."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from medray.broker.client import NAMESPACE
    from medray.cluster import ray_internals
    from medray.cluster.guard import guard_name
    from medray.cluster.local import local_node_specs
    from medray.cluster.nvml import GpuReading
    from medray.scheduling.options import place
    from medray.scheduling.placement import WorkloadProfile

    def t4s() -> set[str]:
        return {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get(TYPE) == "infer-t4"}

    before = t4s()
    added = cluster.add_node(next(s for s in local_node_specs() if s.node_type.name == "infer-t4"))
    try:
        spare = next(iter(_wait(lambda: t4s() - before)))
        guard = _wait(lambda: _actor(guard_name(spare), NAMESPACE))
        hot = GpuReading(index=0, name="T4", temperature_c=95.0, power_w=60.0, power_limit_w=70.0,
                         memory_used_mib=1000.0, memory_total_mib=16000.0, utilization_pct=90.0)
        ray.get(guard.inject.remote([hot]))
        tripped = time.monotonic()
        ray.get(guard.tick.remote())
        ray.get(guard.tick.remote())
        _wait(lambda: spare in ray_internals.draining_nodes())
        drain_s = time.monotonic() - tripped

        @ray.remote(num_cpus=0)
        def node() -> str:
            time.sleep(0.2)
            return ray.get_runtime_context().get_node_id()

        small = place(WorkloadProfile(roles=("infer",), num_cpus=0, num_gpus=0.1)).ray_options()
        tasks = ray.get([node.options(**small).remote() for _ in range(20)], timeout=120)
        pg = placement_group([{"CPU": 0.1}] * 2, bundle_label_selector=[{TYPE: "infer-t4"}] * 2)
        ray.get(pg.ready(), timeout=60)
        bundles = ray.get([node.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=i)).remote() for i in range(2)], timeout=60)
        remove_placement_group(pg)
        return {"drain_s": drain_s, "placed": len(tasks) + len(bundles),
                "on_drained": sum(n == spare for n in tasks + bundles)}
    finally:
        cluster.remove_node(added)


def _actor(name: str, namespace: str) -> Any:
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def _wait(predicate: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster did not get there in time")
        time.sleep(0.1)
    return value


FAMILIES = (("preprocessing (Ray Data tasks)", prep_units), ("diagnosis (1-GPU replicas)", serve_units),
            ("training (Train worker groups)", train_units))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/placement.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    from medray.cli.table import format_table
    from medray.cluster.local import local_cluster

    shares: dict[tuple[str, bool], list[float]] = {}
    units: dict[str, int] = {}
    drains = []
    started = time.monotonic()
    with local_cluster(log_to_driver=False) as cluster:
        for _ in range(args.rounds):
            for name, family in FAMILIES:
                for grouped in (True, False):  # baseline first, then medray, in every round
                    _idle()
                    found, order, slots = family(grouped)
                    shares.setdefault((name, grouped), []).append(on_cheapest_with_room(found, order, slots))
                    units[name] = units.get(name, 0) + (0 if grouped else len(found))
            drains.append(drain_round(cluster))

    def cell(values: list[float]) -> str:
        return f"{100 * statistics.median(values):.0f}% ({100 * min(values):.0f}..{100 * max(values):.0f})"

    rows = []
    for name, _ in FAMILIES:
        medray, baseline = shares[(name, False)], shares[(name, True)]
        ratio = statistics.median(medray) / statistics.median(baseline) if statistics.median(baseline) else None
        rows.append([name, units[name], cell(medray), cell(baseline), f"{ratio:.2f}x" if ratio else "-"])
    everything = [v for (_name, grouped), vs in shares.items() if not grouped for v in vs]
    rows.append(["all three families", sum(units.values()), cell(everything),
                 cell([v for (_name, grouped), vs in shares.items() if grouped for v in vs]), ""])
    print(format_table(["on the cheapest type with room", "units", "medray", "baseline in(...)", "ratio"], rows,
                       align="<>>>>", title=f"{args.rounds} rounds; median (min..max) over rounds"))
    print()
    placed = sum(d["placed"] for d in drains)
    on_drained = sum(d["on_drained"] for d in drains)
    drain_s = [d["drain_s"] for d in drains]
    print(f"guard trip -> Ray drains the node: median {statistics.median(drain_s):.2f} s "
          f"({min(drain_s):.2f}..{max(drain_s):.2f}) over {len(drains)} trips")
    print(f"new GPU tasks and bundles after the trip: {placed}, on the drained node: {on_drained} (goal 0)")
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
