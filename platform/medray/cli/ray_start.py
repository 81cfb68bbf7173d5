"""``medray ray-start NODE_TYPE``: print the ``ray start`` command of an on-prem node of a type."""

from __future__ import annotations

import argparse
from typing import Any

from medray.errors import MedrayError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``ray-start`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser("ray-start", help="print the `ray start` command of an on-prem node of a type")
    p.add_argument("node_type")
    p.add_argument("--address", default="HEAD_IP:6379", help="head address for worker nodes")
    p.add_argument("--config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the node type's ``ray start`` command line, with token auth on."""
    import shlex

    from medray.cluster.kuberay import GUARDS_COMMAND
    from medray.cluster.local import full_node_spec, ray_start_command
    from medray.cluster.node_types import load_node_types

    types = {t.name: t for t in load_node_types(args.config)}
    if args.node_type not in types:
        raise MedrayError(f"no node type {args.node_type!r}; cluster.yaml has {sorted(types)}")
    spec = full_node_spec(types[args.node_type])
    cmd = ray_start_command(spec, head_address=None if spec.is_head else args.address)
    print("RAY_AUTH_MODE=token " + shlex.join(cmd))
    if spec.is_head:  # then the GPU guards, which start with the cluster
        print(f"RAY_AUTH_MODE=token {GUARDS_COMMAND}")
    return 0
