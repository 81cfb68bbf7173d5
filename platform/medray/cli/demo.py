"""``medray demo``: the end-to-end demo on the embedded local cluster."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``demo`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser("demo", help="the end-to-end demo on the embedded local cluster")
    p.add_argument("--out", default="medray-demo")
    p.add_argument("--config")
    p.add_argument("--patients", type=int, help="synthetic cohort size (default: medray.demo.runner.DEMO_PATIENTS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", help="run only these stages (e.g. cluster placement)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo's stages (all, or ``--only`` these) into ``--out``."""
    from medray.demo.runner import DEMO_PATIENTS, run_demo

    patients = DEMO_PATIENTS if args.patients is None else args.patients
    run_demo(args.out, config=args.config, patients=patients, seed=args.seed,
             only=set(args.only) if args.only else None)
    return 0
