import pytest
import yaml

from medray.cluster.node_types import (
    NODE_TYPE_LABEL,
    ROLES,
    load_node_types,
    node_types_from_config,
)
from medray.errors import ConfigError
from tests.conftest import CLUSTER_YAML


def test_every_role_has_a_node_type(node_types):
    assert {t.role for t in node_types} == set(ROLES)


def test_node_types_carry_their_labels(node_types):
    by_name = {t.name: t for t in node_types}
    t4 = by_name["infer-t4"]
    assert (t4.role, t4.site, t4.storage, t4.accelerator) == ("infer", "main", "nvme", "T4")
    assert t4.gpus == 1 and t4.gpu_memory_gb == 16 and t4.price_per_hour > 0
    assert by_name["edge-partner-a"].site == "partner-a"
    assert [t.name for t in node_types if t.is_head] == ["head"]
    assert {t.accelerator for t in node_types if t.role == "train"} == {"A100", "H100"}


def _config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_missing_label_is_a_clear_error():
    config = _config()
    del config["available_node_types"]["infer-t4"]["labels"]["medray.io/site"]
    with pytest.raises(ConfigError, match="infer-t4.*medray.io/site"):
        node_types_from_config(config)


def test_node_type_label_must_match_key():
    config = _config()
    config["available_node_types"]["infer-t4"]["labels"][NODE_TYPE_LABEL] = "other"
    with pytest.raises(ConfigError, match="must equal"):
        node_types_from_config(config)


def test_unknown_role_and_gpu_without_accelerator_are_refused():
    config = _config()
    config["available_node_types"]["cpu-prep"]["labels"]["medray.io/role"] = "gaming"
    with pytest.raises(ConfigError, match="unknown role"):
        node_types_from_config(config)
    config = _config()
    del config["available_node_types"]["infer-l4"]["labels"]["medray.io/accelerator"]
    with pytest.raises(ConfigError, match="accelerator"):
        node_types_from_config(config)


def test_missing_config_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="--config"):
        load_node_types(tmp_path / "nope.yaml")


def test_the_shipped_config_is_found_outside_the_repository(tmp_path, monkeypatch):
    # What `medray up --local` reads from any other folder: the copy shipped inside the package.
    from medray.cluster.node_types import CONFIG_ENV, default_config_path, load_cluster_config

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    path = default_config_path()
    assert path.parent.name == "cluster" and path.is_file()
    assert load_cluster_config() == load_cluster_config(CLUSTER_YAML)
