"""workloads.research.placement: training workers only ever go to training nodes."""

import pytest

from medray.cluster.node_types import NODE_TYPE_LABEL, NodeType
from medray.errors import PlacementError
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile
from workloads.research.placement import any_candidate_selector, place_workers


def test_selector_admits_every_candidate_and_keeps_the_site(node_types):
    placement = place(WorkloadProfile(roles=("train",), num_cpus=1, num_gpus=1), node_types)
    selector = any_candidate_selector(placement)
    assert selector[NODE_TYPE_LABEL].startswith("in(")
    assert set(selector[NODE_TYPE_LABEL][3:-1].split(",")) == {"train-a100", "train-h100"}
    pinned = place(WorkloadProfile(roles=("edge",), num_cpus=1, site="partner-a"), node_types)
    assert any_candidate_selector(pinned) == {NODE_TYPE_LABEL: "edge-partner-a", "medray.io/site": "partner-a"}


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
    assert workers.label_selector[NODE_TYPE_LABEL] == "train-h100"
    assert workers.scaling_config(1).accelerator_type == "H100"
    with pytest.raises(PlacementError, match="no node type"):
        place_workers(accelerator="MI300")


def test_a_node_type_that_is_not_running_is_reported(ray_cluster):
    ghost = NodeType(name="train-ghost", role="train", site="main", storage="nvme", price_per_hour=1.0,
                     cpus=8, gpus=1, accelerator="B200", gpu_memory_gb=180)
    with pytest.raises(PlacementError, match="medray up --local"):
        place_workers(node_types=[ghost])
