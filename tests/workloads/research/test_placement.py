"""workloads.research.placement: training workers only ever go to training nodes."""

import pytest

from medray.cluster.node_types import NODE_TYPE_LABEL, NodeType, load_node_types
from medray.errors import PlacementError
from medray.scheduling.options import place
from medray.scheduling.placement import LoadSnapshot, NodeLoad, WorkloadProfile
from workloads.research.placement import WorkerPlacement, place_workers


def test_each_worker_gets_the_cheapest_training_type_with_room():
    types = load_node_types()
    placement = place(WorkloadProfile(roles=("train",), num_cpus=1, num_gpus=1), types, drained=frozenset())
    load = LoadSnapshot(nodes=(
        NodeLoad("a", "train-a100", free_cpus=2, free_gpus=1, total_cpus=2, total_gpus=1),
        NodeLoad("h", "train-h100", free_cpus=2, free_gpus=1, total_cpus=2, total_gpus=1),
    ))
    workers = WorkerPlacement(placement=placement, accelerator_type=None, backend="gloo", load=load)
    assert [s[NODE_TYPE_LABEL] for s in workers.label_selectors(2)] == ["train-a100", "train-h100"]
    assert workers.scaling_config((1, 2)).label_selector == workers.label_selectors(2)
    pinned = place(WorkloadProfile(roles=("edge",), num_cpus=1, site="partner-a"), types)
    assert pinned.group_selectors(1, load) == [{NODE_TYPE_LABEL: "edge-partner-a", "medray.io/site": "partner-a"}]


def test_workers_on_simulated_gpus_use_gloo_and_an_elastic_range(ray_cluster):
    workers = place_workers(cpus_per_worker=1, gpus_per_worker=1)
    assert workers.backend == "gloo"  # this machine's GPUs are simulated: torch has no CUDA
    assert workers.accelerator_type is None  # A100 and H100 nodes are both candidates
    scaling = workers.scaling_config((1, 2))
    assert scaling.elasticity_enabled and (scaling.min_workers, scaling.max_workers) == (1, 2)
    assert scaling.resources_per_worker == {"CPU": 1, "GPU": 1} and scaling.use_gpu
    assert workers.torch_config().backend == "gloo"


def test_accelerator_narrows_to_one_node_type(ray_cluster):
    workers = place_workers(cpus_per_worker=2, gpus_per_worker=1, accelerator="H100")
    assert [s[NODE_TYPE_LABEL] for s in workers.label_selectors(2)] == ["train-h100"] * 2
    assert workers.scaling_config(1).accelerator_type == "H100"
    with pytest.raises(PlacementError, match="no node type"):
        place_workers(accelerator="MI300")


def test_a_node_type_that_is_not_running_is_reported(ray_cluster):
    ghost = NodeType(name="train-ghost", role="train", site="main", storage="nvme", price_per_hour=1.0,
                     cpus=8, gpus=1, accelerator="B200", gpu_memory_gb=180)
    with pytest.raises(PlacementError, match="medray up --local"):
        place_workers(node_types=[ghost])
