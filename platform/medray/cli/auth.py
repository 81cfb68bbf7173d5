"""``medray token create|list|revoke``: manage the bearer tokens of medray's HTTP services."""

from __future__ import annotations

import argparse
from typing import Any

from medray.security.tokens import SCOPES

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> None:
    """Add the ``token`` command (``create``, ``list``, ``revoke``) to ``medray``'s subparsers."""
    token = subparsers.add_parser("token", help="bearer tokens of the HTTP services (stored hashed)")
    sub = token.add_subparsers(dest="token_command", required=True)
    create = sub.add_parser("create", help="add a client and print its new token once")
    create.add_argument("--file", required=True, help="the token file (created 0600 if absent)")
    create.add_argument("--name", required=True, help="client name, e.g. clinic-radiology-a")
    create.add_argument("--scope", required=True, action="append", choices=SCOPES,
                        help="a scope the client holds; repeat for several")
    lst = sub.add_parser("list", help="clients and their scopes (never tokens)")
    lst.add_argument("--file", required=True)
    revoke = sub.add_parser("revoke", help="remove a client and so invalidate its token")
    revoke.add_argument("--file", required=True)
    revoke.add_argument("--name", required=True)
    token.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``token create``, ``list`` or ``revoke``."""
    return {"create": _create, "list": _list, "revoke": _revoke}[args.token_command](args)


def _create(args: argparse.Namespace) -> int:
    from medray.security.tokens import add_client

    token = add_client(args.file, args.name, args.scope)
    print(f"client {args.name!r} added to {args.file} with scopes {sorted(set(args.scope))}.")
    print("Its token, shown only this once (only its hash is stored):")
    print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    from medray.security.tokens import load_tokens

    for client in sorted(load_tokens(args.file).by_hash.values(), key=lambda c: c.name):
        print(f"{client.name:24} {','.join(sorted(client.scopes))}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from medray.security.tokens import remove_client

    remove_client(args.file, args.name)
    print(f"client {args.name!r} removed; its token no longer works (services re-read the file within seconds)")
    return 0
