"""``medray status``: the cluster's nodes, their GPUs, and the broker's state."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from medray.cli.table import format_table

__all__ = ["add_parser", "format_broker_summary", "format_nodes", "run"]

_NODE_HEADERS = ("NODE", "TYPE", "ROLE", "SITE", "STORAGE", "ACCEL", "ALIVE", "CPU", "GPU", "GPU HEALTH")


def add_parser(subparsers: Any) -> None:
    """Add the ``status`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser("status", help="nodes with role, site, storage, accelerator, GPU health")
    p.add_argument("--json", action="store_true", help="a JSON list of node objects")
    p.add_argument("--broker", action="store_true",
                   help="the priority broker's state and last 100 decisions as JSON")
    p.add_argument("--address", help="Ray address (default: the local cluster of `medray up`, "
                   "else the latest one started here)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the nodes and the broker's state: a table, or JSON with ``--json`` / ``--broker``."""
    from medray.cluster.local import enable_client_token_auth, running_state

    enable_client_token_auth()  # before Ray reads its config at import
    import ray

    from medray.broker.client import broker_summary
    from medray.cluster.status import node_rows

    state = running_state()
    address = args.address or (state["address"] if state else "auto")
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        rows = node_rows()
        broker = broker_summary(events=100 if args.broker else 20)
    finally:
        ray.shutdown()
    if args.broker:
        print(json.dumps(broker, indent=2))
    elif args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_nodes(rows))
        print()
        print(format_broker_summary(broker))
    return 0


def format_nodes(rows: list[dict[str, Any]]) -> str:
    """A text table of :func:`medray.cluster.status.node_rows`, one line per node."""
    return format_table(_NODE_HEADERS, [
        [
            r["node_id"][:8],
            r["node_type"] or "-",
            r["role"] or "-",
            r["site"] or "-",
            r["storage"] or "-",
            r["accelerator"] or "-",
            "yes" if r["alive"] else "NO",
            f"{r['resources'].get('CPU', 0):g}",
            f"{r['resources'].get('GPU', 0):g}",
            r["gpu_health"],
        ]
        for r in rows
    ])


def format_broker_summary(summary: dict[str, Any] | None) -> str:
    """Text lines for ``medray status`` (one line when no broker runs)."""
    if summary is None:
        return "broker: not running"
    lines = [f"broker: {'LENDING' if summary['lending'] else 'idle'}  "
             f"priorities {' > '.join(summary['priorities'])}"]
    for r in summary["runs"]:
        step = r["checkpoint_step"] if r["checkpoint_step"] is not None else "-"
        lines.append(f"  run  {r['run_id']:24} {r['priority']:9} {r['state']:9} attempt {r['attempt']} "
                     f"yields {r['yields']} checkpoint step {step}")
    for d in summary["lanes"]:
        lines.append(f"  lane {d['lane']:24} {d['priority']:9} pending {d['pending']} running "
                     f"{d['running']} borrowed {d['borrowed']} queued {d['queued']} oldest "
                     f"{d['oldest_s']:.1f}s ({d['source']}, {d['age_s']}s ago)")
    for n in summary["drained"]:
        lines.append(f"  drained {n['node_type']} {n['node_id'][:8]}: {', '.join(n['reasons'])}")
    for e in summary["events"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["at"]))
        lines.append(f"  {stamp} {e['action']:8} {e['subject']}: {e['reason']}")
    return "\n".join(lines)
