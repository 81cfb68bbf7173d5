"""The placement policy, as pure functions of cluster.yaml's node types."""

import pytest

from medray.cluster.node_types import NodeType
from medray.errors import PlacementError
from medray.scheduling.options import place
from medray.scheduling.placement import LoadSnapshot, NodeLoad, WorkloadProfile


def names(placement):
    return [t.name for t in placement.candidates]


def test_cheapest_feasible_type_first(node_types):
    # bulk-prep costs less per CPU than cpu-prep: it wins when storage does not matter.
    assert names(place(WorkloadProfile(roles=("prep",)), node_types)) == ["bulk-prep", "cpu-prep"]


def test_storage_preference_beats_price(node_types):
    p = place(WorkloadProfile(roles=("prep",), storage="nvme"), node_types)
    assert names(p) == ["cpu-prep", "bulk-prep"]


def test_role_preference_then_fallback_roles(node_types):
    p = place(WorkloadProfile(roles=("infer", "train"), num_gpus=1), node_types)
    assert names(p) == ["infer-t4", "infer-l4", "train-a100", "train-h100"]
    opts = p.ray_options()
    assert opts["label_selector"] == {"medray.io/node-type": "infer-t4"}
    assert [f["label_selector"]["medray.io/node-type"] for f in opts["fallback_strategy"]] == [
        "infer-l4", "train-a100", "train-h100"]
    assert opts["num_gpus"] == 1


def _load(*nodes):
    return LoadSnapshot(nodes=tuple(NodeLoad(node_id=f"n{i}", node_type=t, free_cpus=c, free_gpus=g,
                                             total_cpus=8, total_gpus=8, drained=d)
                                    for i, (t, c, g, d) in enumerate(nodes)))


def test_a_group_fills_the_cheapest_type_first_and_spills_only_when_it_is_full(node_types):
    p = place(WorkloadProfile(roles=("train",), num_cpus=1, num_gpus=1), node_types, drained=frozenset())
    load = _load(("train-h100", 8, 8, False), ("train-a100", 8, 3, False))
    assert [t.name for t in p.group_types(5, load)] == ["train-a100"] * 3 + ["train-h100"] * 2
    assert [t.name for t in p.group_types(2, load)] == ["train-a100"] * 2
    # Nothing free anywhere: the whole group waits for the cheapest type.
    assert [t.name for t in p.group_types(2, _load(("train-a100", 8, 0, False)))] == ["train-a100"] * 2
    assert p.group_selectors(1, load) == [{"medray.io/node-type": "train-a100"}]


def test_a_group_skips_drained_nodes_and_counts_cpus_too(node_types):
    p = place(WorkloadProfile(roles=("train",), num_cpus=4, num_gpus=1), node_types, drained=frozenset())
    load = _load(("train-a100", 8, 8, True), ("train-a100", 4, 8, False), ("train-h100", 8, 8, False))
    assert [t.name for t in p.group_types(3, load)] == ["train-a100", "train-h100", "train-h100"]
    with pytest.raises(PlacementError, match="count"):
        p.group_types(-1, load)


def test_gpu_memory_rules_out_small_gpus(node_types):
    p = place(WorkloadProfile(roles=("infer", "train"), num_gpus=1, gpu_memory_gb=20), node_types)
    assert names(p) == ["infer-l4", "train-a100", "train-h100"]
    p = place(WorkloadProfile(roles=("train",), num_gpus=1, gpu_memory_gb=60), node_types)
    assert names(p) == ["train-h100"] and "fallback_strategy" not in p.ray_options()


def test_cpu_work_never_goes_to_gpu_roles_it_did_not_ask_for(node_types):
    assert {t.role for t in place(WorkloadProfile(roles=("prep",)), node_types).candidates} == {"prep"}


def test_site_pinning_never_leaves_the_site(node_types):
    p = place(WorkloadProfile(roles=("prep", "infer"), site="partner-a"), node_types)
    assert names(p) == ["edge-partner-a"]
    assert all(sel["medray.io/site"] == "partner-a"
               for sel in [p.label_selector] + [f["label_selector"] for f in p.fallback_strategy])
    with pytest.raises(PlacementError, match="partner-a"):
        place(WorkloadProfile(roles=("train",), num_gpus=1, gpu_memory_gb=40, site="partner-a"),
              node_types)


def test_unpinned_work_never_lands_at_a_partner_site(node_types):
    # A partner hospital's own prep node: unpinned preprocessing (the main hospital's data) must not go there.
    partner_prep = NodeType(name="prep-partner-a", role="prep", site="partner-a", storage="nvme",
                            price_per_hour=0.001, cpus=8, gpus=0, min_workers=1, max_workers=1)
    p = place(WorkloadProfile(roles=("prep",)), [partner_prep, *node_types])
    assert "prep-partner-a" not in names(p) and {t.site for t in p.candidates} == {"main"}
    with pytest.raises(PlacementError, match="at the home site 'main'.*pin it to a site"):
        place(WorkloadProfile(roles=("edge",), num_cpus=1), node_types)
    pinned = place(WorkloadProfile(roles=("prep",), site="partner-a"), [partner_prep, *node_types])
    assert names(pinned)[0] == "prep-partner-a"


def test_realtime_prefers_always_on_types():
    def t(name, price, min_workers):
        return NodeType(name=name, role="infer", site="main", storage="nvme", price_per_hour=price,
                        cpus=4, gpus=1, accelerator="T4", gpu_memory_gb=16, min_workers=min_workers)
    types = [t("cold-cheap", 0.3, 0), t("warm-dear", 0.6, 1)]
    batch = place(WorkloadProfile(roles=("infer",), num_gpus=1), types)
    realtime = place(WorkloadProfile(roles=("infer",), num_gpus=1, latency="realtime"), types)
    assert names(batch) == ["cold-cheap", "warm-dear"]
    assert names(realtime) == ["warm-dear", "cold-cheap"]


@pytest.mark.parametrize("kwargs, message", [
    ({"roles": ()}, "non-empty"),
    ({"roles": "prep"}, "not the string"),
    ({"roles": ("wizard",)}, "roles must be"),
    ({"roles": ("prep",), "latency": "asap"}, "latency"),
    ({"roles": ("prep",), "gpu_memory_gb": 8}, "num_gpus"),
    ({"roles": ("prep",), "num_cpus": -1}, ">= 0"),
])
def test_bad_profiles_are_refused(kwargs, message):
    with pytest.raises(PlacementError, match=message):
        WorkloadProfile(**kwargs)


def test_infeasible_profile_says_what_to_do(node_types):
    with pytest.raises(PlacementError, match="add such a node type"):
        place(WorkloadProfile(roles=("infer",), num_gpus=2), node_types)
