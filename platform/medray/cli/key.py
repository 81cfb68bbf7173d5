"""``medray key create FILE``: a de-identification (pseudonym) key file, random, mode 0600."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "create_key", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``key`` command (``create``) to ``medray``'s subparsers."""
    key = subparsers.add_parser("key", help="the de-identification key file (pseudonyms, date shifts)")
    sub = key.add_subparsers(dest="key_command", required=True)
    create = sub.add_parser("create", help="write a fresh random key (0600) unless the file exists")
    create.add_argument("file", help="the key file, e.g. ~/.medray/deid.key")
    key.set_defaults(func=run)


def create_key(path: str) -> str:
    """Create the key file at ``path`` (``~`` expands) unless it exists (then checked, never replaced); say which."""
    import os
    from pathlib import Path

    from medray.cli.preflight import shown
    from medray.privacy.pseudonym import ensure_key_file

    file = Path(os.path.expanduser(path))
    existed = file.exists()
    ensure_key_file(file)
    if existed:
        return f"key file {shown(file)} exists and is valid: kept (a new key would change every pseudonym)"
    return (f"key file {shown(file)} created (0600). Back it up, and give preprocessing and serving the same key: "
            "pseudonyms of two keys do not match")


def run(args: argparse.Namespace) -> int:
    """Run ``key create``."""
    print(create_key(args.file))
    return 0
