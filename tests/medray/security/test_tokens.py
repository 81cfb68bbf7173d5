"""medray.security.tokens: per-client bearer tokens with scopes, stored only as hashes."""

import json
import os
import time

import pytest

from medray.errors import ConfigError
from medray.security.tokens import (
    SCOPES,
    AuthError,
    TokenFile,
    add_client,
    hash_token,
    load_tokens,
    remove_client,
)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens.json"
    tokens = {
        "clinic": add_client(path, "clinic-a", ["clinic"]),
        "research": add_client(path, "lab-b", ["research"]),
        "ops": add_client(path, "ops", ["admin", "research"]),
    }
    return path, tokens


def test_tokens_are_stored_only_as_hashes_in_an_owner_only_file(token_file):
    path, tokens = token_file
    text = path.read_text()
    for token in tokens.values():
        assert token not in text and hash_token(token) in text
    assert os.stat(path).st_mode & 0o077 == 0
    assert len({*tokens.values()}) == 3 and all(len(t) > 40 for t in tokens.values())


def test_scopes_decide_what_a_client_may_do(token_file):
    path, tokens = token_file
    store = load_tokens(path)
    assert store.authorize(f"Bearer {tokens['clinic']}", ["clinic"]).name == "clinic-a"
    assert store.authorize(f"bearer  {tokens['ops']} ", ["admin"]).scopes == {"admin", "research"}
    with pytest.raises(AuthError) as e:
        store.authorize(f"Bearer {tokens['clinic']}", ["research", "admin"])
    assert e.value.status == 403 and e.value.reason == "wrong_scope"
    assert tokens["clinic"] not in str(e.value)


@pytest.mark.parametrize("header, reason", [
    (None, "missing_token"), ("", "missing_token"), ("Basic dXNlcjpwdw==", "malformed_token"),
    ("Bearer", "malformed_token"), ("Bearer mdr_not-a-real-token", "unknown_token"),
])
def test_missing_malformed_or_unknown_tokens_are_401(token_file, header, reason):
    with pytest.raises(AuthError) as e:
        load_tokens(token_file[0]).authorize(header, SCOPES)
    assert (e.value.status, e.value.reason) == (401, reason)


def test_revoked_token_stops_working_and_reload_picks_it_up(token_file):
    path, tokens = token_file
    watched = TokenFile(path, check_every_s=0)
    assert watched.current().authenticate(f"Bearer {tokens['research']}").name == "lab-b"
    remove_client(path, "lab-b")
    time.sleep(0.01)  # a distinct mtime
    with pytest.raises(AuthError):
        watched.current().authenticate(f"Bearer {tokens['research']}")


def test_a_broken_file_keeps_the_last_valid_clients_and_is_reported(token_file):
    path, tokens = token_file
    errors = []
    watched = TokenFile(path, check_every_s=0, on_error=errors.append)
    path.write_text("{not json")
    assert watched.current().authenticate(f"Bearer {tokens['clinic']}").name == "clinic-a"
    assert len(errors) == 1 and isinstance(errors[0], ConfigError)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["clients"][0].update(scopes=["root"]), "scopes"),
    (lambda d: d["clients"][0].update(token_sha256="abc"), "token_sha256"),
    (lambda d: d["clients"].append(dict(d["clients"][0])), "duplicate"),
    (lambda d: d.update(version=2), "version"),
])
def test_invalid_token_files_are_refused_with_the_reason(token_file, mutate, message):
    path, _ = token_file
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        load_tokens(path)


def test_group_writable_file_is_refused(token_file):
    path, _ = token_file
    path.chmod(0o620)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_tokens(path)


def test_duplicate_client_and_unknown_scope_are_refused(token_file):
    path, _ = token_file
    with pytest.raises(ConfigError, match="already exists"):
        add_client(path, "clinic-a", ["clinic"])
    with pytest.raises(ConfigError, match="scopes"):
        add_client(path, "x", ["superuser"])

