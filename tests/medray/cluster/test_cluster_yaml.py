"""cluster.yaml is a valid Ray launcher config, and the KubeRay manifest generated from it parses."""

import copy
import subprocess
import sys

import jsonschema
import pytest
import yaml

from medray.cluster.ingress import INGRESS_SETTINGS
from medray.cluster.node_types import node_types_from_config
from medray.cluster.ray_internals import validate_cluster_config
from tests.conftest import CLUSTER_YAML


@pytest.fixture()
def config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_validates_with_rays_launcher_schema(config):
    validate_cluster_config(copy.deepcopy(config))


def test_schema_validation_is_not_vacuous(config):
    config["available_node_types"]["infer-t4"]["price_per_hour"] = 0.5  # not a launcher key
    with pytest.raises(jsonschema.ValidationError):
        validate_cluster_config(config)


def test_token_auth_is_on_for_every_ray_start(config):
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_every_ray_start_runs_the_haproxy_front_door(config):
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    for key, value in INGRESS_SETTINGS.items():
        assert all(f"{key}={value} " in c for c in starts), key


def test_min_max_workers_and_prices(config):
    for t in node_types_from_config(config):
        assert 0 <= t.min_workers <= t.max_workers or t.is_head
        assert t.price_per_hour > 0


def test_kuberay_manifest_mirrors_the_node_types(config):
    out = subprocess.run(
        [sys.executable, "-m", "medray", "kuberay", "--config", str(CLUSTER_YAML)],
        check=True, capture_output=True, text=True,
    ).stdout
    manifest = yaml.safe_load(out)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    spec = manifest["spec"]
    types = {t.name: t for t in node_types_from_config(config)}
    assert spec["headGroupSpec"]["labels"]["medray.io/role"] == "coordinator"
    groups = {g["labels"]["medray.io/node-type"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {n for n, t in types.items() if not t.is_head}
    for name, group in groups.items():
        t = types[name]
        assert group["labels"] == t.labels
        assert (group["minReplicas"], group["maxReplicas"]) == (t.min_workers, t.max_workers)
        pod = group["template"]["spec"]
        assert pod["nodeSelector"]["medray.io/site"] == t.site
        limits = pod["containers"][0]["resources"]["limits"]
        assert limits.get("nvidia.com/gpu", 0) == int(t.gpus)
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        assert {k: env[k]["value"] for k in INGRESS_SETTINGS} == INGRESS_SETTINGS
