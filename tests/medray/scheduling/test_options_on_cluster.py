"""Placement on the real embedded cluster: label selectors and fallbacks as Ray executes them."""

import time

import pytest
import ray

from medray.cluster.node_types import NodeType
from medray.scheduling.load import cluster_load
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile


def _node_labels():
    return ray.get_runtime_context().get_node_labels()


where = ray.remote(_node_labels)


@ray.remote
class Holder:
    """Holds resources on a node until killed."""

    def node_type(self):
        return ray.get_runtime_context().get_node_labels()["medray.io/node-type"]


def wait_until_gpus_idle(timeout_s=30):
    """Finished tasks keep their worker's lease for a moment; wait until every GPU is free."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("GPU", 0) < ray.cluster_resources()["GPU"]:
        assert time.monotonic() < deadline, "GPUs still leased by earlier work"
        time.sleep(0.2)


def run_where(profile, node_types, n=1):
    opts = place(profile, node_types).ray_options()
    return ray.get([where.options(**opts).remote() for _ in range(n)])


@pytest.mark.parametrize("role", ["prep", "infer", "train", "edge", "coordinator"])
def test_work_pinned_to_a_role_lands_only_there(ray_cluster, node_types, role):
    # Edge nodes are all at partner sites: work goes there only when pinned to one.
    profile = WorkloadProfile(roles=(role,), num_cpus=0.1, site="partner-a" if role == "edge" else None)
    landed = run_where(profile, node_types, n=6)
    assert {labels["medray.io/role"] for labels in landed} == {role}


def test_falls_back_when_the_preferred_type_has_no_node(ray_cluster, node_types):
    # A cheaper inference type that exists in the config but has no node running right now.
    absent = NodeType(name="infer-a2", role="infer", site="main", storage="nvme", price_per_hour=0.1,
                      cpus=4, gpus=1, accelerator="A2", gpu_memory_gb=16, min_workers=0, max_workers=2)
    profile = WorkloadProfile(roles=("infer",), num_cpus=0.1, num_gpus=0.5)
    assert place(profile, [absent, *node_types]).node_type.name == "infer-a2"
    [labels] = run_where(profile, [absent, *node_types])
    assert labels["medray.io/node-type"] == "infer-t4"


def test_spills_to_the_next_type_when_the_cheapest_is_busy(ray_cluster, node_types):
    profile = WorkloadProfile(roles=("infer", "train"), num_cpus=0.1, num_gpus=1)
    opts = place(profile, node_types).ray_options()
    wait_until_gpus_idle()
    holder = Holder.options(**opts).remote()
    try:
        assert ray.get(holder.node_type.remote()) == "infer-t4"  # the whole simulated T4
        [labels] = run_where(profile, node_types)
        assert labels["medray.io/node-type"] == "infer-l4"
    finally:
        ray.kill(holder)


def test_site_pinned_work_waits_rather_than_leaving_its_site(ray_cluster, node_types):
    edge = next(t for t in node_types if t.role == "edge")
    hog = WorkloadProfile(roles=("edge",), num_cpus=2, site="partner-a")  # the edge node's CPUs
    holder = Holder.options(**place(hog, node_types).ray_options()).remote()
    assert ray.get(holder.node_type.remote()) == edge.name
    pinned = WorkloadProfile(roles=("prep", "infer", "edge"), num_cpus=1, site="partner-a")
    ref = where.options(**place(pinned, node_types).ray_options()).remote()
    ready, _ = ray.wait([ref], timeout=3)
    assert not ready, "site-pinned work ran while its site was full: it must have left the site"
    ray.kill(holder)
    deadline = time.monotonic() + 60
    labels = ray.get(ref, timeout=max(1, deadline - time.monotonic()))
    assert labels["medray.io/site"] == "partner-a"


def _in_bundles(selectors, profile):
    """Where a placement group of one bundle per selector puts its bundles (as Ray Train and Tune do)."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {"CPU": profile.num_cpus, "GPU": profile.num_gpus}
    pg = placement_group([bundle] * len(selectors), bundle_label_selector=selectors)
    try:
        ray.get(pg.ready(), timeout=60)
        return [ray.get(where.options(num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=i)).remote())["medray.io/node-type"] for i in range(len(selectors))]
    finally:
        remove_placement_group(pg)


def test_a_worker_group_takes_the_cheaper_training_type_first_and_spills_when_it_is_full(ray_cluster, node_types):
    profile = WorkloadProfile(roles=("train",), num_cpus=1, num_gpus=1)
    p = place(profile, node_types)
    assert [t.name for t in p.candidates] == ["train-a100", "train-h100"]
    wait_until_gpus_idle()
    assert _in_bundles(p.group_selectors(1, cluster_load()), profile) == ["train-a100"]
    wait_until_gpus_idle()
    assert _in_bundles(p.group_selectors(2, cluster_load()), profile) == ["train-a100", "train-h100"]
    holder = Holder.options(**p.ray_options()).remote()  # takes the A100 node's GPU
    try:
        assert ray.get(holder.node_type.remote()) == "train-a100"
        assert _in_bundles(p.group_selectors(1, cluster_load()), profile) == ["train-h100"]
    finally:
        ray.kill(holder)
