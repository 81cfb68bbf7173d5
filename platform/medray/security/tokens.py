"""Bearer tokens for medray's HTTP services: one token per client, with scopes, stored only as hashes.

The token file (JSON, owner-only permissions) maps each client to the SHA-256 of its token and the
scopes it holds::

    {"version": 1, "clients": [
        {"name": "clinic-a", "scopes": ["clinic"], "token_sha256": "9f2c…", "created": "2026-…"}]}

Tokens are 256-bit random strings made by :func:`new_token`, so a plain SHA-256 is enough to store
them: there is nothing to brute-force, and a per-request slow hash would cost every request
milliseconds. A token is shown once, when it is created; the service never sees it in clear again.

Scopes: ``clinic`` (routine diagnosis requests), ``emergency`` (the reserved emergency lane: a
token must hold it, ``clinic`` alone is refused there), ``research`` (read-only model information)
and ``admin`` (operations such as switching the served model version). A client holds one or more
scopes; a route names the scopes it accepts, so clinic tokens never reach the emergency, research
or admin routes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medray.errors import ConfigError, MedrayError

__all__ = [
    "SCOPES",
    "TOKEN_PREFIX",
    "AuthError",
    "Client",
    "TokenStore",
    "TokenFile",
    "new_token",
    "hash_token",
    "load_tokens",
    "add_client",
    "remove_client",
]

SCOPES: tuple[str, ...] = ("clinic", "emergency", "research", "admin")
TOKEN_PREFIX = "mdr_"
_FILE_VERSION = 1
_HEX64 = frozenset("0123456789abcdef")


class AuthError(MedrayError):
    """A request is not authenticated (``status`` 401) or not authorised (``status`` 403)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Client:
    """An authenticated caller: its name (not a secret, not PHI) and its scopes."""

    name: str
    scopes: frozenset[str]


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex SHA-256 under which ``token`` is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_scopes(scopes: Iterable[str], where: str) -> frozenset[str]:
    scopes = frozenset(scopes)
    unknown = sorted(scopes - set(SCOPES))
    if not scopes or unknown:
        raise ConfigError(f"{where}: scopes must be a non-empty subset of {list(SCOPES)}, got {sorted(scopes)}")
    return scopes


@dataclass(frozen=True)
class TokenStore:
    """The clients of a token file, looked up by token hash."""

    by_hash: Mapping[str, Client]

    def authenticate(self, authorization: str | None) -> Client:
        """The client of an ``Authorization: Bearer <token>`` header value; AuthError 401 otherwise."""
        if not authorization:
            raise AuthError(401, "missing_token", "no bearer token: send `Authorization: Bearer <token>`")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "malformed_token", "the Authorization header must be `Bearer <token>`")
        digest = hash_token(token)
        # Looking up the digest rather than comparing tokens means timing can at most reveal how
        # the digest of a guess compares with stored digests, which says nothing about any token.
        client = self.by_hash.get(digest)
        if client is None:
            raise AuthError(401, "unknown_token", "unknown or revoked token: ask the service admin for a token")
        return client

    def authorize(self, authorization: str | None, allowed: Collection[str]) -> Client:
        """Authenticate, then require one of the ``allowed`` scopes (AuthError 403 otherwise)."""
        client = self.authenticate(authorization)
        if not client.scopes & set(allowed):
            raise AuthError(
                403, "wrong_scope",
                f"client {client.name!r} holds scopes {sorted(client.scopes)}; this route needs one of "
                f"{sorted(allowed)}",
            )
        return client


def _read(path: Path) -> dict[str, Any]:
    try:
        mode = path.stat().st_mode
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"token file {path} does not exist: create it with `medray token create`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"token file {path} cannot be read as JSON ({e.__class__.__name__}): fix or recreate it") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Whoever can write the file can mint tokens.
        raise ConfigError(f"token file {path} is writable by group or others: run `chmod 600 {path}`")
    if not isinstance(data, dict) or data.get("version") != _FILE_VERSION or not isinstance(data.get("clients"), list):
        raise ConfigError(f"token file {path} must be {{'version': {_FILE_VERSION}, 'clients': [...]}}")
    return data


def load_tokens(path: str | Path) -> TokenStore:
    """Read and validate a token file."""
    path = Path(path)
    by_hash: dict[str, Client] = {}
    names: set[str] = set()
    for i, entry in enumerate(_read(path)["clients"]):
        where = f"token file {path}, client #{i}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected an object")
        name, digest = entry.get("name"), entry.get("token_sha256")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX64:
            raise ConfigError(f"{where}: 'token_sha256' must be 64 lowercase hex digits (see hash_token)")
        if name in names or digest in by_hash:
            raise ConfigError(f"{where}: duplicate client name or token")
        names.add(name)
        by_hash[digest] = Client(name=name, scopes=_check_scopes(entry.get("scopes") or (), where))
    return TokenStore(by_hash=by_hash)


class TokenFile:
    """A token file that a long-running service re-reads when it changes (revocation without restart).

    The file's modification time and size are checked at most every ``check_every_s`` seconds. A
    file that became invalid is reported through ``on_error`` and the last valid clients stay in
    force, so a typo does not lock every client out; fix the file and it is picked up.
    """

    def __init__(self, path: str | Path, *, check_every_s: float = 1.0,
                 on_error: Callable[[ConfigError], None] | None = None) -> None:
        self.path = Path(path)
        self._check_every_s = check_every_s
        self._on_error = on_error
        self._store = load_tokens(self.path)  # invalid at start: fail the start
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def current(self) -> TokenStore:
        """The clients of the file as of at most ``check_every_s`` ago."""
        now = time.monotonic()
        if now - self._checked >= self._check_every_s:
            self._checked = now
            try:
                stamp = self._stat()
                if stamp != self._stamp:
                    self._stamp = stamp  # a broken version is reported once, not every second
                    self._store = load_tokens(self.path)
            except (OSError, ConfigError) as e:
                if self._on_error is not None:
                    self._on_error(e if isinstance(e, ConfigError) else
                                   ConfigError(f"token file {self.path} unreadable ({e.strerror})"))
        return self._store


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_client(path: str | Path, name: str, scopes: Iterable[str]) -> str:
    """Add client ``name`` with ``scopes`` to the token file (created if absent); returns its new token.

    The token is returned once and stored only as its hash: hand it to the client now.
    """
    path = Path(path)
    scopes = _check_scopes(scopes, f"client {name!r}")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("a client name must be a non-empty string")
    data = _read(path) if path.exists() else {"version": _FILE_VERSION, "clients": []}
    if any(c.get("name") == name for c in data["clients"]):
        raise ConfigError(f"client {name!r} already exists in {path}: remove it first to issue a new token")
    token = new_token()
    data["clients"].append({
        "name": name,
        "scopes": sorted(scopes),
        "token_sha256": hash_token(token),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    _write(path, data)
    load_tokens(path)  # never leave a file behind that the service would refuse
    return token


def remove_client(path: str | Path, name: str) -> None:
    """Revoke client ``name``'s token by removing it from the token file."""
    path = Path(path)
    data = _read(path)
    kept = [c for c in data["clients"] if c.get("name") != name]
    if len(kept) == len(data["clients"]):
        raise ConfigError(f"no client named {name!r} in {path}")
    _write(path, {**data, "clients": kept})
