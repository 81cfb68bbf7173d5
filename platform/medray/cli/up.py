"""``medray up --local``: start the embedded multi-role cluster on this machine."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``up`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser("up", help="start the embedded multi-role cluster on this machine")
    p.add_argument("--local", action="store_true", help="one scaled-down node per node type here")
    p.add_argument("--config", help="cluster yaml (default: ./cluster.yaml or the shipped one)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds to wait for all nodes and the job server (default 300)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the local cluster and say how to reach it; exit 2 without ``--local``."""
    from medray.cluster.local import up

    if not args.local:
        print("only `medray up --local` is built in; for a real fleet use "
              "`ray up cluster.yaml` or `medray kuberay | kubectl apply -f -`", file=sys.stderr)
        return 2
    state = up(args.config, timeout_s=args.timeout)
    print(f"local cluster up: {len(state['node_types'])} nodes ({', '.join(state['node_types'])})")
    print(f"address {state['address']}  dashboard {state['dashboard']}")
    print("connect with ray.init(address='auto'); for `ray job submit` and `serve deploy` first run")
    print(f"  {state['job_submit_env']}")
    print("stop with `medray down`")
    return 0
