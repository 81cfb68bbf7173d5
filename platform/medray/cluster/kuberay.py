"""A KubeRay ``RayCluster`` manifest generated from ``cluster.yaml`` (``medray kuberay``).

Each node type becomes a group with the same Ray labels (KubeRay ≥ 1.5 passes a group's
``labels`` to ``ray start``), resources, min/max replicas, and a Kubernetes ``nodeSelector``
that keeps the pods on the right GPU model and site. Token auth comes from a Secret.
"""

from __future__ import annotations

from typing import Any

from medray.cluster.ingress import INGRESS_SETTINGS
from medray.cluster.node_types import SITE_LABEL, NodeType, node_types_from_config

__all__ = ["AUTH_SECRET", "GPU_PRODUCTS", "GUARDS_COMMAND", "raycluster_manifest"]

# Secret holding the Ray auth token: kubectl create secret generic medray-ray-auth --from-literal=token=…
AUTH_SECRET = "medray-ray-auth"
# What the head runs once Ray is up: the GPU guards' keeper (medray.cluster.guard).
GUARDS_COMMAND = "python -m medray guards --address 127.0.0.1:6379"

# NVIDIA GPU feature discovery's `nvidia.com/gpu.product` label per accelerator.
GPU_PRODUCTS = {
    "T4": "Tesla-T4",
    "L4": "NVIDIA-L4",
    "A10G": "NVIDIA-A10G",
    "A40": "NVIDIA-A40",
    "A100": "NVIDIA-A100-SXM4-40GB",
    "H100": "NVIDIA-H100-80GB-HBM3",
}


def _image(ray_version: str, gpu: bool) -> str:
    return f"rayproject/ray:{ray_version}-py311{'-gpu' if gpu else ''}"


def _k8s_name(node_type: str) -> str:
    return node_type.lower().replace("_", "-").replace(".", "-")


def _pod_template(t: NodeType, container: str, ray_version: str) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": f"{t.cpus:g}"}
    if t.memory_bytes:
        limits["memory"] = f"{t.memory_bytes // 2**30}Gi"
    if t.gpus:
        limits["nvidia.com/gpu"] = int(t.gpus)
    node_selector = {SITE_LABEL: t.site}
    if t.accelerator:
        node_selector["nvidia.com/gpu.product"] = GPU_PRODUCTS.get(t.accelerator, t.accelerator)
    return {
        "metadata": {"labels": {"app.kubernetes.io/part-of": "medray", "medray.io/node-type": t.name}},
        "spec": {
            "nodeSelector": node_selector,
            "containers": [
                {
                    "name": container,
                    "image": _image(ray_version, bool(t.gpus)),
                    "resources": {"limits": limits, "requests": dict(limits)},
                    "env": [
                        {"name": "RAY_AUTH_MODE", "value": "token"},
                        *({"name": k, "value": v} for k, v in INGRESS_SETTINGS.items()),
                        {
                            "name": "RAY_AUTH_TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": AUTH_SECRET, "key": "token"}},
                        },
                    ],
                }
            ],
        },
    }


def _group(t: NodeType, container: str, ray_version: str) -> dict[str, Any]:
    return {
        "rayStartParams": {},
        "labels": dict(t.labels),
        "template": _pod_template(t, container, ray_version),
    }


def raycluster_manifest(
    config: dict[str, Any], *, ray_version: str = "2.60.0", namespace: str = "medray"
) -> dict[str, Any]:
    """The ``RayCluster`` (apiVersion ``ray.io/v1``) equivalent of a medray cluster config."""
    types = node_types_from_config(config)
    head = next(t for t in types if t.is_head)
    head_group = _group(head, "ray-head", ray_version)
    head_group["rayStartParams"] = {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    # The GPU guards start with the cluster: once the head's Ray answers, its keeper gives every GPU
    # node a guard (the image must carry medray, as cluster.yaml's setup_commands install it).
    head_group["template"]["spec"]["containers"][0]["lifecycle"] = {"postStart": {"exec": {"command": [
        "/bin/sh", "-c", f"until ray health-check >/dev/null 2>&1; do sleep 2; done; {GUARDS_COMMAND}"]}}}
    workers = [
        {
            "groupName": _k8s_name(t.name),
            "replicas": t.min_workers,
            "minReplicas": t.min_workers,
            "maxReplicas": t.max_workers,
            **_group(t, "ray-worker", ray_version),
        }
        for t in types
        if not t.is_head
    ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": _k8s_name(config.get("cluster_name", "medray")),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "medray"},
        },
        "spec": {
            "rayVersion": ray_version,
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": {
                "version": "v2",
                "idleTimeoutSeconds": int(config.get("idle_timeout_minutes", 5)) * 60,
            },
            "headGroupSpec": head_group,
            "workerGroupSpecs": workers,
        },
    }
