"""``medray status``: the cluster's nodes, their GPUs, and the broker's state."""

from __future__ import annotations

import time
from typing import Any


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
                     f"{d['running']} borrowed {d['borrowed']} ({d['source']}, {d['age_s']}s ago)")
    for n in summary["drained"]:
        lines.append(f"  drained {n['node_type']} {n['node_id'][:8]}: {', '.join(n['reasons'])}")
    for e in summary["events"]:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["at"]))
        lines.append(f"  {stamp} {e['action']:8} {e['subject']}: {e['reason']}")
    return "\n".join(lines)
