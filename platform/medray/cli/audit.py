"""``medray audit verify PATH``: check an audit log's hash chain."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``audit`` command (``audit verify PATH``) to ``medray``'s subparsers."""
    audit = subparsers.add_parser("audit", help="audit log tools")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = sub.add_parser("verify", help="recompute an audit log's hash chain; exit 1 if broken")
    verify.add_argument("path", help="the audit log (JSON lines)")
    verify.add_argument("--key-file", help="the HMAC key file, for a log written with a key (chmod 600)")
    verify.add_argument("--expect-last-hash", help="the last hash seen before: detects lines cut off the end")
    audit.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``audit verify``: 0 when the chain holds, 1 (and the first broken line) when not."""
    from medray.privacy.pseudonym import load_key
    from medray.security.audit import verify_chain

    key = load_key(args.key_file) if args.key_file else None
    report = verify_chain(args.path, key=key, expect_last_hash=args.expect_last_hash)
    if report.ok:
        print(f"ok: {report.entries} entries chain correctly; last hash {report.last_hash}")
        print("keep the last hash elsewhere and pass it as --expect-last-hash next time to detect "
              "lines cut off the end")
        return 0
    print(f"TAMPERED or damaged: line {report.line}: {report.problem} "
          f"({report.entries} entries verified before it)")
    return 1
