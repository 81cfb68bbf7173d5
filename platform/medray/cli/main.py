"""The ``medray`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medray.cli import (
    audit,
    auth,
    demo,
    down,
    guards,
    key,
    kuberay,
    models,
    ray_start,
    serve,
    status,
    synth,
    up,
)
from medray.errors import MedrayError

__all__ = ["COMMANDS", "build_parser", "main"]

# One module per command, each with add_parser(subparsers) and run(args) -> int; in --help's order.
COMMANDS = (up, down, status, guards, ray_start, synth, kuberay, models, demo, audit, auth, key, serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``medray`` parser with every command of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(prog="medray", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medray`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MedrayError as e:
        print(f"medray: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
