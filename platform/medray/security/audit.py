"""The audit log: append-only JSON lines, each entry chained to the one before by a hash.

Every entry carries ``seq`` (0, 1, 2, …), ``time`` (UTC), ``prev`` (the previous entry's hash;
64 zeros for the first) and ``hash`` = SHA-256 of ``prev`` and the entry's other fields in
canonical JSON. :func:`verify_chain` recomputes the chain, so editing, removing, inserting or
reordering any line is detected at that line. Cutting lines off the end leaves a valid shorter
chain: to detect that, keep the last hash somewhere else (``medray audit verify`` prints it) and
pass it as ``expect_last_hash``. With a ``key``, the chain is an HMAC chain: someone who can edit
the file but does not hold the key cannot recompute the hashes after an edit.

Several processes (replicas on the nodes sharing the file system) may append to one log: each
append takes an exclusive ``flock`` and reads the previous hash under it. Records must never
carry PHI: callers write pseudonyms, reason codes and model references.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medray.errors import MedrayError

__all__ = ["GENESIS", "AuditError", "AuditLog", "ChainReport", "entry_hash", "verify_chain"]

GENESIS = "0" * 64
_RESERVED = ("seq", "time", "prev", "hash")
_TAIL_CHUNK = 64 * 1024


class AuditError(MedrayError):
    """The audit log cannot be appended to (it is damaged or unwritable)."""


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def entry_hash(entry: Mapping[str, Any], key: bytes | None = None) -> str:
    """The chain hash of ``entry`` (all its fields but ``hash``, ``prev`` included)."""
    body = _canonical({k: v for k, v in entry.items() if k != "hash"})
    if key is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _last_line(f: Any, size: int) -> bytes:
    """The last complete line of a file of ``size`` bytes that ends with a newline."""
    pos, tail = size, b""
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        f.seek(pos)
        tail = f.read(step) + tail
        cut = tail.rfind(b"\n", 0, len(tail) - 1)
        if cut >= 0:
            return tail[cut + 1:]
    return tail


class AuditLog:
    """Appends hash-chained entries to one JSON-lines file (created if absent).

    ``fsync=True`` forces each entry to disk before :meth:`append` returns (survives power loss,
    costs a disk flush per request); by default an entry reaches the OS before returning, which
    survives a crash of the process.
    """

    def __init__(self, path: str | Path, *, key: bytes | None = None, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = key
        self._fsync = fsync
        # After our own append we know the file's end and last hash; when another process has
        # appended since, the size differs and we read its last line instead.
        self._known_size = -1
        self._known_hash = GENESIS
        self._known_seq = -1

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``record`` (JSON-serialisable, without the reserved keys) and return the entry."""
        clash = [k for k in _RESERVED if k in record]
        if clash:
            raise ValueError(f"audit records must not set the reserved keys {clash}")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            with os.fdopen(fd, "r+b", buffering=0) as f:
                fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
                size = os.fstat(f.fileno()).st_size
                prev, seq = self._tail(f, size)
                entry: dict[str, Any] = {
                    "seq": seq + 1,
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    **record,
                    "prev": prev,
                }
                entry["hash"] = entry_hash(entry, self._key)
                line = _canonical(entry) + b"\n"
                f.write(line)
                if self._fsync:
                    os.fsync(f.fileno())
                self._known_size = size + len(line)
                self._known_hash, self._known_seq = entry["hash"], entry["seq"]
        except OSError as e:
            raise AuditError(f"cannot append to the audit log {self.path} ({e.strerror}): "
                             "check the disk and the file's permissions") from None
        return entry

    def _tail(self, f: Any, size: int) -> tuple[str, int]:
        if size == 0:
            return GENESIS, -1
        if size == self._known_size:
            return self._known_hash, self._known_seq
        line = _last_line(f, size)
        try:
            if not line.endswith(b"\n"):
                raise ValueError
            last = json.loads(line)
            return str(last["hash"]), int(last["seq"])
        except (ValueError, KeyError, TypeError):
            # Appending after a damaged line would chain to garbage: refuse, and let a person look.
            raise AuditError(
                f"the audit log {self.path} ends with an incomplete or malformed line: run "
                f"`medray audit verify {self.path}`, then move the damaged file aside"
            ) from None


@dataclass(frozen=True)
class ChainReport:
    """The outcome of :func:`verify_chain`; ``line`` is 1-based and set when ``ok`` is False."""

    ok: bool
    entries: int
    last_hash: str
    problem: str | None = None
    line: int | None = None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        yield from enumerate(f, start=1)


def verify_chain(path: str | Path, *, key: bytes | None = None,
                 expect_last_hash: str | None = None) -> ChainReport:
    """Recompute the chain of the log at ``path``; the report says where it first breaks."""
    prev, count = GENESIS, 0

    def broken(n: int, problem: str) -> ChainReport:
        return ChainReport(ok=False, entries=count, last_hash=prev, problem=problem, line=n)

    for n, raw in _lines(Path(path)):
        if not raw.endswith(b"\n"):
            return broken(n, "the last line is incomplete (a write was cut off)")
        try:
            entry = json.loads(raw)
        except ValueError:
            return broken(n, "the line is not valid JSON")
        if not isinstance(entry, dict) or not all(k in entry for k in _RESERVED):
            return broken(n, "the line is not an audit entry (seq, time, prev and hash required)")
        if entry["seq"] != count:
            return broken(n, f"sequence number {entry['seq']!r} where {count} was expected "
                             "(a line was removed, inserted or moved)")
        if entry["prev"] != prev:
            return broken(n, "it does not chain to the line before (a line was removed, inserted or moved)")
        if not hmac.compare_digest(str(entry["hash"]), entry_hash(entry, key)):
            return broken(n, "its content does not match its hash (the line was edited)")
        prev, count = entry["hash"], count + 1
    if expect_last_hash is not None and prev != expect_last_hash:
        return ChainReport(ok=False, entries=count, last_hash=prev,
                           problem="the chain does not end at the expected hash (lines were cut off the end)",
                           line=count + 1)
    return ChainReport(ok=True, entries=count, last_hash=prev)
