"""Node types and their roles, read from ``cluster.yaml`` (the single source of truth).

A node type is a kind of machine in the fleet: its role (what it is best at), its site (where it
stands; PHI never leaves it), its storage, its accelerator and its price. Every medray node
advertises these as Ray node labels under ``medray.io/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medray.errors import ConfigError

__all__ = [
    "ROLES",
    "ROLE_LABEL",
    "SITE_LABEL",
    "STORAGE_LABEL",
    "NODE_TYPE_LABEL",
    "ACCELERATOR_LABEL",
    "GPU_MEMORY_LABEL",
    "PRICE_LABEL",
    "SIMULATED_GPU_LABEL",
    "CONFIG_ENV",
    "NodeType",
    "default_config_path",
    "load_cluster_config",
    "load_node_types",
    "node_types_from_config",
]

ROLES = ("coordinator", "prep", "infer", "train", "edge")

ROLE_LABEL = "medray.io/role"
SITE_LABEL = "medray.io/site"
STORAGE_LABEL = "medray.io/storage"
NODE_TYPE_LABEL = "medray.io/node-type"
ACCELERATOR_LABEL = "medray.io/accelerator"
GPU_MEMORY_LABEL = "medray.io/gpu-memory-gb"
PRICE_LABEL = "medray.io/price-per-hour"
# Set by the local cluster on GPU node types when the machine has no GPU.
SIMULATED_GPU_LABEL = "medray.io/simulated-gpu"

CONFIG_ENV = "MEDRAY_CLUSTER_CONFIG"

_REQUIRED_LABELS = (ROLE_LABEL, SITE_LABEL, STORAGE_LABEL, NODE_TYPE_LABEL, PRICE_LABEL)


@dataclass(frozen=True)
class NodeType:
    """One node type of ``cluster.yaml``, with its labels parsed into fields."""

    name: str
    role: str
    site: str
    storage: str
    price_per_hour: float
    cpus: float
    gpus: float = 0.0
    memory_bytes: int = 0
    accelerator: str | None = None
    gpu_memory_gb: float = 0.0
    min_workers: int = 0
    max_workers: int = 0
    is_head: bool = False
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    resources: dict[str, float] = field(default_factory=dict, compare=False, hash=False)

    @property
    def custom_resources(self) -> dict[str, float]:
        """Resources other than CPU, GPU and memory (what ``ray start --resources`` takes)."""
        return {k: v for k, v in self.resources.items() if k not in ("CPU", "GPU", "memory")}


def default_config_path() -> Path:
    """``$MEDRAY_CLUSTER_CONFIG``, else ``./cluster.yaml``, else the copy shipped with medray."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    try:
        local = Path.cwd() / "cluster.yaml"
    except FileNotFoundError:  # the working directory was removed under us
        local = None
    if local is not None and local.is_file():
        return local
    return Path(__file__).with_name("cluster.yaml")


# libyaml's safe loader when PyYAML was built with it: 0.8 ms against 7 ms for cluster.yaml, which
# every placement reads (a pipeline's driver, once per run).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_cluster_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read a cluster launcher yaml as a dict; ConfigError if it is missing or not a mapping."""
    path = Path(path) if path is not None else default_config_path()
    try:
        config = yaml.load(path.read_text(), Loader=_SAFE_LOADER)
    except FileNotFoundError:
        raise ConfigError(
            f"cluster config {path} not found: pass --config or set {CONFIG_ENV}"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cluster config {path} is not valid YAML: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        raise ConfigError(f"cluster config {path} has no 'available_node_types' mapping")
    return config


def node_types_from_config(config: dict[str, Any]) -> list[NodeType]:
    """Parse every node type of a cluster config, checking medray's labels on each."""
    head = config.get("head_node_type")
    types = []
    for name, spec in config["available_node_types"].items():
        labels = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
        missing = [label for label in _REQUIRED_LABELS if label not in labels]
        if missing:
            raise ConfigError(f"node type {name!r} lacks the labels {missing}")
        if labels[NODE_TYPE_LABEL] != name:
            raise ConfigError(
                f"node type {name!r} has {NODE_TYPE_LABEL}={labels[NODE_TYPE_LABEL]!r}: "
                "it must equal the node type's key"
            )
        role = labels[ROLE_LABEL]
        if role not in ROLES:
            raise ConfigError(f"node type {name!r} has unknown role {role!r}; roles are {ROLES}")
        resources = {str(k): float(v) for k, v in (spec.get("resources") or {}).items()}
        gpus = resources.get("GPU", 0.0)
        accelerator = labels.get(ACCELERATOR_LABEL)
        if gpus and not accelerator:
            raise ConfigError(f"node type {name!r} has GPUs but no {ACCELERATOR_LABEL} label")
        try:
            price = float(labels[PRICE_LABEL])
            gpu_memory = float(labels.get(GPU_MEMORY_LABEL, 0))
        except ValueError:
            raise ConfigError(f"node type {name!r} has a non-numeric price or GPU memory label") from None
        types.append(
            NodeType(
                name=name,
                role=role,
                site=labels[SITE_LABEL],
                storage=labels[STORAGE_LABEL],
                price_per_hour=price,
                cpus=resources.get("CPU", 0.0),
                gpus=gpus,
                memory_bytes=int(resources.get("memory", 0)),
                accelerator=accelerator,
                gpu_memory_gb=gpu_memory,
                min_workers=int(spec.get("min_workers", 0)),
                max_workers=int(spec.get("max_workers", 0)),
                is_head=(name == head),
                labels=labels,
                resources=resources,
            )
        )
    return types


def load_node_types(path: str | Path | None = None) -> list[NodeType]:
    """The node types of the cluster config at ``path`` (default: :func:`default_config_path`)."""
    return node_types_from_config(load_cluster_config(path))

