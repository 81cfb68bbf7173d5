"""Load-aware placement: the pure ranking, drained-node exclusion, and CPU work kept off GPU nodes."""

import time

import pytest
import ray

from medray.cluster.node_types import NodeType
from medray.errors import PlacementError
from medray.scheduling.load import cluster_load, current_node_type, drained_nodes, live_nodes, require_running
from medray.scheduling.options import place
from medray.scheduling.placement import NODE_ID_LABEL, LoadSnapshot, NodeLoad, WorkloadProfile, plan


def names(placement):
    return [t.name for t in placement.candidates]


def infer(name, price):
    return NodeType(name=name, role="infer", site="main", storage="nvme", price_per_hour=price,
                    cpus=4, gpus=1, accelerator="T4", gpu_memory_gb=16, min_workers=1, max_workers=4)


def node(node_id, node_type, *, free_gpus=1.0, temp=None, drained=False, free_cpus=4.0):
    return NodeLoad(node_id=node_id, node_type=node_type, free_cpus=free_cpus, free_gpus=free_gpus,
                    total_cpus=4.0, total_gpus=1.0, gpu_temperature_c=temp, drained=drained)


GPU_WORK = WorkloadProfile(roles=("infer",), num_cpus=1, num_gpus=0.5)
TYPES = [infer("cheap", 0.5), infer("dear", 0.8)]


def test_without_load_the_cheapest_type_wins():
    assert names(place(GPU_WORK, TYPES)) == ["cheap", "dear"]


def test_a_type_that_cannot_take_the_work_now_goes_behind_one_that_can():
    half = LoadSnapshot(nodes=(node("a", "cheap", free_gpus=0.5), node("b", "dear")))
    assert names(place(GPU_WORK, TYPES, load=half)) == ["cheap", "dear"]  # 0.5 GPU still fits
    full = LoadSnapshot(nodes=(node("a", "cheap", free_gpus=0.0), node("b", "dear")))
    assert names(place(GPU_WORK, TYPES, load=full)) == ["dear", "cheap"]


def test_busy_weighs_price_between_types_that_both_fit():
    types = [infer("cheap", 0.5), infer("close", 0.6)]
    load = LoadSnapshot(nodes=(
        NodeLoad("a", "cheap", free_cpus=4, free_gpus=0.5, total_cpus=4, total_gpus=1),
        NodeLoad("b", "close", free_cpus=4, free_gpus=1.0, total_cpus=4, total_gpus=1),
    ))
    # 0.25 × (1 + 0.5) = 0.375 for the half-busy cheap type vs 0.3 for the idle one.
    assert names(place(GPU_WORK, types, load=load)) == ["close", "cheap"]


def test_cool_beats_hot_and_absent_types_come_last():
    load = LoadSnapshot(nodes=(node("a", "cheap", temp=88.0), node("b", "dear", temp=55.0)),
                        warm_temperature_c=80.0)
    assert names(place(GPU_WORK, TYPES, load=load)) == ["dear", "cheap"]
    only_dear = LoadSnapshot(nodes=(node("b", "dear"),))
    assert names(place(GPU_WORK, TYPES, load=only_dear)) == ["dear", "cheap"]


def test_load_never_overrides_role_preference():
    train = NodeType(name="train", role="train", site="main", storage="nvme", price_per_hour=30,
                     cpus=96, gpus=8, accelerator="A100", gpu_memory_gb=40)
    profile = WorkloadProfile(roles=("infer", "train"), num_cpus=1, num_gpus=1)
    load = LoadSnapshot(nodes=(node("a", "cheap", free_gpus=0), node("b", "dear", free_gpus=0),
                               NodeLoad("c", "train", free_cpus=96, free_gpus=8, total_cpus=96,
                                        total_gpus=8)))
    assert names(place(profile, [*TYPES, train], load=load)) == ["cheap", "dear", "train"]


def test_drained_nodes_are_excluded_from_every_gpu_selector():
    load = LoadSnapshot(nodes=(node("n2", "cheap", drained=True), node("n1", "dear", drained=True),
                               node("n3", "dear")))
    p = place(GPU_WORK, TYPES, load=load)
    selectors = [p.label_selector] + [f["label_selector"] for f in p.fallback_strategy]
    assert all(s[NODE_ID_LABEL] == "!in(n1,n2)" for s in selectors)
    # The drained "cheap" node no longer counts as capacity: "dear" has a live, idle node.
    assert p.node_type.name == "dear"
    cpu = place(WorkloadProfile(roles=("infer",), num_cpus=1), TYPES, load=load)
    assert NODE_ID_LABEL not in cpu.label_selector  # a hot GPU does not stop CPU work
    explicit = place(GPU_WORK, TYPES, drained=frozenset({"x"}))
    assert explicit.label_selector[NODE_ID_LABEL] == "!in(x)"


def test_cpu_only_work_prefers_cpu_types_over_its_gpu_roles(node_types):
    p = place(WorkloadProfile(roles=("infer", "prep"), num_cpus=1), node_types)
    assert names(p) == ["bulk-prep", "cpu-prep", "infer-t4", "infer-l4"]
    gpu = place(WorkloadProfile(roles=("infer", "prep"), num_cpus=1, num_gpus=0.5), node_types)
    assert names(gpu) == ["infer-t4", "infer-l4"]


def test_without_a_broker_nothing_is_excluded():
    # Whether or not this process is connected to the shared cluster yet, no broker runs here.
    assert drained_nodes() == frozenset()
    assert NODE_ID_LABEL not in place(GPU_WORK, TYPES).label_selector


# On the real cluster -------------------------------------------------------------------------


@ray.remote
class Holder:
    def node_type(self):
        return current_node_type()


def wait_for(predicate, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_cpu_work_stays_off_gpu_nodes_while_cpu_nodes_are_free(ray_cluster, node_types):
    profile = WorkloadProfile(roles=("infer", "prep"), num_cpus=1)
    opts = place(profile, node_types).ray_options()
    prep_cpus = sum(min(t.cpus, 2) for t in node_types if t.role == "prep")
    wait_for(lambda: cluster_free("prep", node_types) >= prep_cpus, what="prep CPUs to be free")
    holders = [Holder.options(**opts).remote() for _ in range(prep_cpus)]
    try:
        landed = ray.get([h.node_type.remote() for h in holders], timeout=60)
        assert {t for t in landed} <= {"bulk-prep", "cpu-prep"}, landed
        # The CPU nodes are full now: only then does CPU work spill to a GPU node.
        spill = Holder.options(**opts).remote()
        holders.append(spill)
        assert ray.get(spill.node_type.remote(), timeout=60) in ("infer-t4", "infer-l4")
    finally:
        for h in holders:
            ray.kill(h)


def cluster_free(role, node_types):
    roles = {t.name: t.role for t in node_types}
    return sum(n.free_cpus for n in cluster_load().nodes if roles.get(n.node_type) == role)


def test_cluster_load_sees_busy_gpus_and_placement_moves_on(ray_cluster, node_types):
    load = cluster_load()
    assert sorted(n.node_type for n in load.nodes) == sorted(t.name for t in node_types)
    assert {n.node_type: n.total_gpus for n in load.nodes}["infer-t4"] == 1.0
    wait_for(lambda: {n.node_type: n.free_gpus for n in cluster_load().nodes}["infer-t4"] == 1.0,
             what="the T4 to be free")
    profile = WorkloadProfile(roles=("infer",), num_cpus=0.1, num_gpus=1)
    assert place(profile, node_types, load=cluster_load()).node_type.name == "infer-t4"
    holder = Holder.options(**place(profile, node_types).ray_options()).remote()
    try:
        assert ray.get(holder.node_type.remote(), timeout=60) == "infer-t4"
        busy = cluster_load()
        assert {n.node_type: n.free_gpus for n in busy.nodes}["infer-t4"] == 0.0
        assert place(profile, node_types, load=busy).node_type.name == "infer-l4"
    finally:
        ray.kill(holder)


def test_require_running_returns_the_live_nodes_or_says_what_to_do(ray_cluster, node_types):
    prep = plan(WorkloadProfile(roles=("prep",)), node_types)
    prep_nodes = {n["NodeID"] for n in live_nodes({"bulk-prep", "cpu-prep"})}
    assert {n["NodeID"] for n in require_running(prep)} == prep_nodes and prep_nodes
    assert len(live_nodes()) == len(node_types)
    ghost = plan(WorkloadProfile(roles=("infer",)), [infer("ghost", 0.5)])
    with pytest.raises(PlacementError, match=r"types \['ghost'\] is running in this Ray cluster: do X$"):
        require_running(ghost, hint="do X")
