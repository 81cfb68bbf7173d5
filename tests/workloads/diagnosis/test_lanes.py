"""Per-lane placement and autoscaling: what lets the emergency lane borrow GPUs and give them back."""

import pytest
from pydantic import ValidationError

from workloads.diagnosis.app import deployment_options, lane_options
from workloads.diagnosis.config import DiagnosisArgs, LaneConfig

PATHS = {"registry": "/srv/registry", "tokens": "/srv/tokens.json", "audit_log": "/srv/audit.jsonl"}


def node_types_of(selector):
    value = selector["medray.io/node-type"]
    return value.removeprefix("in(").removesuffix(")").split(",")


def test_a_lane_takes_the_cheapest_inference_type_first_and_borrows_training_nodes_last(node_types):
    roles = {t.name: t.role for t in node_types}
    options = lane_options(LaneConfig(num_gpus=0.5, gpu_memory_gb=2))
    # Cost order: the cheapest inference type, then the other inference types, then the training
    # types in price order (the GPUs the broker lends). Serve stops replicas outside the primary
    # selector first when it scales down, the newest (the borrowed ones) first.
    assert node_types_of(options["label_selector"]) == ["infer-t4"]
    fallbacks = [t for f in options["fallback_strategy"] for t in node_types_of(f["label_selector"])]
    assert fallbacks == ["infer-l4", "train-a100", "train-h100"]
    assert [roles[t] for t in fallbacks] == ["infer", "train", "train"]
    assert (options["num_gpus"], options["num_cpus"]) == (0.5, 1.0)


def test_a_static_partition_never_leaves_the_inference_nodes(node_types):
    roles = {t.name: t.role for t in node_types}
    options = lane_options(LaneConfig(roles=("infer",)))
    fallbacks = [t for f in options.get("fallback_strategy", []) for t in node_types_of(f["label_selector"])]
    assert {roles[t] for t in [*node_types_of(options["label_selector"]), *fallbacks]} == {"infer"}


@pytest.mark.parametrize("roles, message", [
    ((), "distinct node roles"), (("infer", "infer"), "distinct"), (("inference",), "node roles"),
])
def test_lane_roles_are_checked(roles, message):
    with pytest.raises(ValidationError, match=message):
        LaneConfig(roles=roles)


def test_each_lane_autoscales_by_its_own_settings():
    args = DiagnosisArgs.model_validate({**PATHS, "lanes": {
        "routine": {},
        "emergency": {"max_replicas": 5, "upscale_delay_s": 0.5, "downscale_delay_s": 20, "look_back_period_s": 2},
    }})
    options = deployment_options(args)
    emergency, routine = options["emergency"]["autoscaling_config"], options["ingress"]["autoscaling_config"]
    assert (emergency.max_replicas, emergency.upscale_delay_s, emergency.downscale_delay_s) == (5, 0.5, 20)
    # Handles push their load often enough for a 2 s window.
    assert (emergency.look_back_period_s, emergency.metrics_interval_s) == (2, 1)
    assert (routine.upscale_delay_s, routine.downscale_delay_s, routine.metrics_interval_s) == (3, 60, 10)


def test_the_default_emergency_lane_is_reserved_and_gives_back_within_the_goal():
    lane = DiagnosisArgs.model_validate(PATHS).lanes["emergency"]
    assert lane.min_replicas >= 1 and 4 <= lane.max_replicas <= 6 and "train" in lane.roles
    assert lane.upscale_delay_s <= 1 and lane.downscale_delay_s <= 30
