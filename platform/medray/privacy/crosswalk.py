"""Random record codes for HIPAA Safe Harbor, kept in a crosswalk file next to the key.

Safe Harbor lets a covered entity keep a re-identification code only if it "is not derived from or
related to information about the individual" (45 CFR 164.514(c)(1)): a keyed hash of the MRN is
derived from it. A :class:`Crosswalk` gives each distinct identifier (an MRN, an encounter ID) a
random code (``secrets.token_hex``) the first time it is seen and the same code ever after, so
tables of one export, and later exports, still join. The file maps a keyed digest of each identifier
(never the identifier itself) to its code; the mechanism must not be disclosed (164.514(c)(2)):
keep the file as you keep the key (mode 0600, same access list).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from medray.errors import ConfigError
from medray.privacy.pseudonym import key_id

__all__ = ["Crosswalk"]

_VERSION = 1


def _digest(key: bytes, kind: str, value: str) -> str:
    return hmac.new(key, f"crosswalk\0{kind}\0{value}".encode(), hashlib.sha256).hexdigest()


class Crosswalk:
    """Identifier -> random code, per kind of identifier, stored at ``path`` under ``key``."""

    def __init__(self, path: str | Path, key: bytes) -> None:
        self.path = Path(path)
        self._key = key
        self._codes: dict[str, dict[str, str]] = {}
        self._dirty = False
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"crosswalk {self.path} cannot be read ({type(e).__name__}): restore it "
                                  "from the backup kept with the key") from None
            if data.get("version") != _VERSION or data.get("key_id") != key_id(key):
                raise ConfigError(f"crosswalk {self.path} was written under another key or format: use the "
                                  "key it was made with, or a new crosswalk file for a new key")
            self._codes = {kind: dict(codes) for kind, codes in data["codes"].items()}

    @classmethod
    def from_codes(cls, codes: Mapping[str, Mapping[str, str]], key: bytes) -> Crosswalk:
        """A read-only crosswalk from :meth:`snapshot` (what pipeline tasks get)."""
        walk = cls.__new__(cls)
        walk.path, walk._key, walk._dirty = Path(os.devnull), key, False
        walk._codes = {kind: dict(c) for kind, c in codes.items()}
        return walk

    def add(self, values: Iterable[str], kind: str) -> None:
        """Give every value of ``kind`` without a code a new random one."""
        codes = self._codes.setdefault(kind, {})
        for value in values:
            digest = _digest(self._key, kind, value)
            if digest not in codes:
                codes[digest] = secrets.token_hex(12)
                self._dirty = True

    def codes(self, values: list[str], kind: str) -> list[str]:
        """The codes of ``values`` (each must have been :meth:`add` ed)."""
        known = self._codes.get(kind, {})
        try:
            return [known[_digest(self._key, kind, v)] for v in values]
        except KeyError:
            raise ConfigError(f"an identifier of kind {kind!r} has no code in the crosswalk: add the "
                              "table's identifiers before de-identifying it") from None

    def snapshot(self) -> dict[str, dict[str, str]]:
        """The codes, for :meth:`from_codes` in another process."""
        return {kind: dict(c) for kind, c in self._codes.items()}

    def save(self) -> None:
        """Write the file atomically, readable by its owner only (no-op when nothing was added)."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".crosswalk-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _VERSION, "key_id": key_id(self._key), "codes": self._codes}, f)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._dirty = False
