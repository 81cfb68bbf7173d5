"""``medray guards``: start the GPU guards of a running cluster (every GPU node, nodes added later too)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``guards`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser(
        "guards", help="start the GPU guards on every GPU node of a running cluster (idempotent)")
    p.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else the local cluster)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between NVML readings (default 5)")
    p.add_argument("--stop", action="store_true", help="stop the guards instead (drains already made stay)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start (or stop) the guard keeper and print the guarded nodes."""
    import ray

    from medray.cluster.guard import guard_states, start_guards, stop_guards
    from medray.cluster.local import connect

    if args.address:
        ray.init(address=args.address, logging_level="WARNING")
    else:
        connect()
    if args.stop:
        stop_guards()
        print("GPU guards stopped")
        return 0
    guards = start_guards(interval_s=args.interval)
    states = {s["node_id"]: s for s in guard_states()}
    print(f"GPU guards on {len(guards)} GPU nodes (the keeper on the head adds new ones):")
    for node_id in sorted(guards):
        state = states.get(node_id, {})
        print(f"  {node_id[:8]} {state.get('node_type', '?'):16} "
              f"{'DRAINED ' + ', '.join(state['reasons']) if state.get('drained') else 'watching'}")
    return 0
