"""``medray synth``: write a synthetic CT + EMR cohort."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``synth`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser("synth", help="write a synthetic CT + EMR cohort")
    p.add_argument("--patients", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, default=128, help="pixels per slice side")
    p.add_argument("--slices", type=int, default=20, help="slices per series")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the cohort and print what was written."""
    from medray.data.cohort import generate_cohort

    s = generate_cohort(args.out, patients=args.patients, seed=args.seed, rows=args.rows,
                        slices=args.slices)
    print(f"{s.patients} patients ({s.with_nodule} with a nodule), {s.series} series, "
          f"{s.dicom_files} DICOM files -> {s.out_dir}")
    return 0
