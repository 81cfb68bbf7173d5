"""``medray kuberay``: print a KubeRay RayCluster manifest for cluster.yaml."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``kuberay`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser("kuberay", help="print a KubeRay RayCluster manifest for cluster.yaml")
    p.add_argument("--config")
    p.add_argument("--namespace", default="medray")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the manifest as YAML to stdout."""
    import yaml

    from medray.cluster.kuberay import raycluster_manifest
    from medray.cluster.node_types import load_cluster_config

    manifest = raycluster_manifest(load_cluster_config(args.config), namespace=args.namespace)
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
    return 0
