"""``medray models --registry DIR``: list the models of a registry."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``models`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser("models", help="list the models of a registry")
    p.add_argument("--registry", required=True)
    p.set_defaults(func=run)


def _backends(info: dict[str, dict[str, Any]]) -> str:
    """The accelerated backends a version carries: ``onnx``; ``onnx-int8`` with its AUC check, or
    ``onnx-int8 refused`` where the check failed (medray.models.backends records both)."""
    shown = []
    for name, entry in sorted(info.items()):
        if "passed" in entry:
            verdict = "" if entry["passed"] else " refused"
            shown.append(f"{name}{verdict} (AUC {entry['auc_int8']:.3f} vs fp32 {entry['auc_fp32']:.3f})")
        else:
            shown.append(name)
    return ", ".join(shown) or "-"


def run(args: argparse.Namespace) -> int:
    """One row per model version: reference, what it finds, creation time, metrics, accelerated backends."""
    from medray.cli.table import format_table
    from medray.models.registry import list_models

    rows = [(m.ref, m.finding, m.created, " ".join(f"{k}={v:.3f}" for k, v in sorted(m.metrics.items())) or "-",
             _backends(m.backends)) for m in list_models(args.registry)]
    if not rows:
        print(f"no models in {args.registry}: train one (`python -m workloads.research.train`) or run `make demo`")
        return 0
    print(format_table(("model", "finding", "created", "metrics", "backends (beside eager)"), rows))
    return 0
