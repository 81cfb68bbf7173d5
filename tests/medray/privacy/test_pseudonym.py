"""medray.privacy.pseudonym: keyed, deterministic pseudonyms and key loading."""

import hashlib
import hmac
import os
import re

import pytest

from medray.errors import ConfigError
from medray.privacy.pseudonym import (
    KEY_ENV,
    date_shift_days,
    date_shifts,
    key_id,
    load_key,
    pseudo_uid,
    pseudonym,
    pseudonyms,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SECRET_HEX = "00112233445566778899aabbccddeeff"


def test_pseudonym_is_deterministic_keyed_and_24_hex():
    p = pseudonym(KEY, "MRN-4711", kind="patient")
    assert re.fullmatch(r"[0-9a-f]{24}", p)
    assert p == pseudonym(KEY, "MRN-4711", kind="patient")
    assert p == pseudonym(KEY, " MRN-4711 ", kind="patient")  # DICOM pads, EMR may not
    assert p != pseudonym(KEY, "MRN-4712", kind="patient")
    assert p != pseudonym(OTHER_KEY, "MRN-4711", kind="patient")


def test_kinds_are_separate_namespaces():
    assert pseudonym(KEY, "4711", kind="patient") != pseudonym(KEY, "4711", kind="accession")
    with pytest.raises(ValueError):
        pseudonym(KEY, "4711", kind="pat\0ient")
    with pytest.raises(ValueError):
        pseudonym(KEY, "4711", kind="")
    with pytest.raises(ValueError, match="16 bytes"):
        pseudonym(b"short", "4711", kind="patient")


@pytest.mark.parametrize("uid", ["1.2.840.113619.2.55.3.604688119", "1.2.3", "9" * 64, "2.25.0"])
def test_pseudo_uid_is_a_valid_deterministic_dicom_uid(uid):
    out = pseudo_uid(KEY, uid)
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", out) and len(out) <= 64
    assert out == pseudo_uid(KEY, uid) != pseudo_uid(OTHER_KEY, uid)
    assert out != pseudo_uid(KEY, uid + "1")


def test_date_shift_is_in_range_deterministic_and_varies():
    shifts = [date_shift_days(KEY, f"MRN-{i}") for i in range(500)]
    assert all(-730 <= s <= -1 for s in shifts)
    assert len(set(shifts)) > 200
    assert date_shift_days(KEY, "MRN-7") == shifts[7]


def test_key_id_is_short_public_and_key_specific():
    assert re.fullmatch(r"[0-9a-f]{12}", key_id(KEY))
    assert key_id(KEY) != key_id(OTHER_KEY)


def test_load_key_from_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET_HEX)
    assert load_key() == bytes.fromhex(SECRET_HEX)
    monkeypatch.setenv(KEY_ENV, "a passphrase of enough bytes")
    assert load_key() == b"a passphrase of enough bytes"
    monkeypatch.setenv(KEY_ENV, "tooshort")
    with pytest.raises(ConfigError, match="shorter") as excinfo:
        load_key()
    assert "tooshort" not in str(excinfo.value)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=KEY_ENV):
        load_key()


def test_load_key_from_file_requires_0600(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "deid.key"
    path.write_text(SECRET_HEX + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600") as excinfo:
        load_key(path)
    assert SECRET_HEX not in str(excinfo.value)
    os.chmod(path, 0o600)
    assert load_key(path) == bytes.fromhex(SECRET_HEX)
    os.chmod(path, 0o400)
    assert load_key(str(path)) == bytes.fromhex(SECRET_HEX)
    with pytest.raises(ConfigError, match="does not exist"):
        load_key(tmp_path / "missing.key")


def test_pseudonyms_are_hmac_sha256_of_kind_nul_value_and_batches_agree():
    """The published definition (a stable contract: changing it would break every join) and the batch API."""
    values = ["MRN-001", " MRN-001\0", "MRN-002", "Ünïcode"]
    stripped = [v.strip(" \t\r\n\0") for v in values]
    expected = [hmac.new(KEY, f"patient\0{v}".encode(), hashlib.sha256).hexdigest()[:24] for v in stripped]
    assert pseudonyms(KEY, values, kind="patient") == expected
    assert [pseudonym(KEY, v, kind="patient") for v in values] == expected
    assert date_shifts(KEY, values) == [date_shift_days(KEY, v) for v in values]
    with pytest.raises(ValueError, match="at least"):
        pseudonyms(b"short", [], kind="patient")
