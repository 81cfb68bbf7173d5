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


def run(args: argparse.Namespace) -> int:
    """One line per model: reference, creation time, metrics."""
    from medray.models.registry import list_models

    for m in list_models(args.registry):
        metrics = " ".join(f"{k}={v:.3f}" for k, v in sorted(m.metrics.items()))
        print(f"{m.ref:24} {m.created}  {metrics}")
    return 0
