"""``medray down``: stop the local cluster of ``medray up --local``."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``down`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser("down", help="stop the local cluster")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Stop the local cluster, if one is recorded as up."""
    from medray.cluster.local import down

    print("local cluster stopped" if down() else "no local cluster is recorded as up")
    return 0
