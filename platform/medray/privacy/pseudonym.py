"""Keyed, deterministic pseudonyms shared by DICOM and EMR de-identification and by serving.

Every pseudonym is an HMAC-SHA256 under one secret key, so the same input always maps to the same
output (records stay linkable across pipelines and runs) while nobody without the key can reverse
or recompute it. Changing the key changes every pseudonym: keep it stable and backed up.

Contracts that the DICOM pipeline, the EMR pipeline and the diagnosis service must all follow:

* The patient pseudonym, written to DICOM PatientID and to the EMR MRN column alike, is
  ``pseudonym(key, mrn, kind="patient")`` where ``mrn`` is the original, un-pseudonymised MRN.
* Dates of a patient are shifted by ``date_shift_days(key, mrn)`` days, with the same original
  MRN, in DICOM and EMR alike, so intervals between a patient's events are preserved.
* UIDs are replaced by ``pseudo_uid(key, uid)``, so references between instances stay consistent.

Input values are compared after stripping surrounding whitespace and NUL padding (DICOM pads
values to an even length), so ``"12345 "`` from DICOM and ``"12345"`` from the EMR agree.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

from medray.errors import ConfigError

__all__ = [
    "KEY_ENV",
    "MIN_KEY_BYTES",
    "MAX_DATE_SHIFT_DAYS",
    "load_key",
    "ensure_key_file",
    "key_id",
    "pseudonym",
    "pseudonyms",
    "pseudo_uid",
    "date_shift_days",
    "date_shifts",
]

KEY_ENV = "MEDRAY_DEID_KEY"
MIN_KEY_BYTES = 16
MAX_DATE_SHIFT_DAYS = 730

_HOW_TO_SET = (
    f"set {KEY_ENV} to a secret of at least {MIN_KEY_BYTES} bytes, e.g. "
    f"`export {KEY_ENV}=$(python -c 'import secrets; print(secrets.token_hex(32))')`, "
    "or pass a key file holding such a secret (chmod 600)"
)


def _parse_key(text: str, source: str) -> bytes:
    """A secret given as hex (only hex digits, even length) or as UTF-8 text."""
    text = text.strip()
    if not text:
        raise ConfigError(f"the de-identification key in {source} is empty: {_HOW_TO_SET}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = text.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        # Length only: the key itself must never appear in a message or log.
        raise ConfigError(
            f"the de-identification key in {source} is {len(key)} bytes, shorter than the "
            f"{MIN_KEY_BYTES} required: {_HOW_TO_SET}"
        )
    return key


def load_key(path: str | Path | None = None) -> bytes:
    """The de-identification key, from ``path`` if given, else from the environment variable ``KEY_ENV``.

    The secret is hex (decoded) or UTF-8 text (used as is); surrounding whitespace is ignored.
    A key file must not be readable by group or others (mode 0600 or stricter).
    """
    if path is None:
        value = os.environ.get(KEY_ENV)
        if value is None:
            raise ConfigError(f"no de-identification key: {_HOW_TO_SET}")
        return _parse_key(value, f"${KEY_ENV}")
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"key file {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}): "
                f"run `chmod 600 {path}`"
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist: {_HOW_TO_SET}") from None
    except OSError as e:
        raise ConfigError(f"cannot read key file {path} ({e.strerror}): check its owner and mode") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"key file {path} is not hex or UTF-8 text: {_HOW_TO_SET}") from None
    return _parse_key(text, f"key file {path}")


def ensure_key_file(path: str | Path) -> Path:
    """Create ``path`` holding a fresh random key (mode 0600) unless it exists; return the path.

    For demos, notebooks and tests. Production keys come from the hospital's secret store, as
    ``$MEDRAY_DEID_KEY`` or a 0600 file: keep them stable and backed up, since a new key means new
    pseudonyms and outputs of two keys do not join. An existing file is checked with :func:`load_key`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL with mode 0600: the secret is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        load_key(path)
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def key_id(key: bytes) -> str:
    """A short public fingerprint of ``key`` (safe to publish in manifests, reveals nothing)."""
    return hashlib.sha256(b"medray-key-id" + key).hexdigest()[:12]


def _digests(key: bytes, values: Iterable[str], kind: str) -> list[bytes]:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the key must be at least {MIN_KEY_BYTES} bytes; load it with load_key()")
    if not kind or "\0" in kind:
        # A NUL in kind would let ("a\0b", "c") and ("a", "b\0c") collide across namespaces.
        raise ValueError(f"kind must be a non-empty string without NUL, got {kind!r}")
    # HMAC(key, kind + NUL + value): the keyed state after the prefix is computed once and copied
    # for every value, several times faster than a new HMAC per value.
    prefix = hmac.new(key, (kind + "\0").encode("utf-8"), hashlib.sha256)
    out = []
    for value in values:
        h = prefix.copy()
        h.update(value.strip(" \t\r\n\0").encode("utf-8"))
        out.append(h.digest())
    return out


def _digest(key: bytes, value: str, kind: str) -> bytes:
    return _digests(key, (value,), kind)[0]


def pseudonym(key: bytes, value: str, *, kind: str) -> str:
    """24 hex chars identifying ``value`` within namespace ``kind`` (e.g. "patient", "accession")."""
    return _digest(key, value, kind).hex()[:24]


def pseudonyms(key: bytes, values: Iterable[str], *, kind: str) -> list[str]:
    """:func:`pseudonym` of each value, computed in one batch (for whole columns)."""
    return [d.hex()[:24] for d in _digests(key, values, kind)]


def pseudo_uid(key: bytes, uid: str) -> str:
    """A valid DICOM UID replacing ``uid``: ``2.25.`` + the first 128 bits of the HMAC as a decimal.

    At most 44 characters (2^128 has 39 digits), within DICOM's 64 and with no leading zero.
    """
    return "2.25." + str(int.from_bytes(_digest(key, uid, "uid")[:16], "big"))


def date_shift_days(key: bytes, patient_id: str) -> int:
    """The per-patient date offset in days, in [-730, -1]; ``patient_id`` is the original MRN.

    Always negative (dates move into the past) and never zero, so a shifted date is never the
    real one.
    """
    return date_shifts(key, (patient_id,))[0]


def date_shifts(key: bytes, patient_ids: Iterable[str]) -> list[int]:
    """:func:`date_shift_days` of each patient, computed in one batch."""
    # Modulo bias is 730 / 2**64: negligible.
    return [-1 - int.from_bytes(d[:8], "big") % MAX_DATE_SHIFT_DAYS
            for d in _digests(key, patient_ids, "date-shift")]
