"""`medray serve` checks before it deploys: one line per problem naming its fix, exit 2, in seconds, no cluster."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from medray.cli import preflight
from medray.cli.main import main
from medray.cli.serve import DEFAULT_CONFIG, failures, first_run, resolve_config
from medray.cluster.local import _MARKER_ENV, state_file
from medray.cluster.local_serve import free_port
from medray.imaging.normalize import InputSpec
from medray.models.registry import register
from medray.privacy.pseudonym import ensure_key_file
from medray.security.tokens import add_client
from tests.conftest import REPO

CONFIG = str(REPO / DEFAULT_CONFIG)
SPEC = InputSpec(spacing_mm=(6.0, 6.0, 6.0), shape=(16, 64, 64), window="lung")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh machine: an empty HOME, no key in the environment, no demo output in the working directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MEDRAY_HOME", raising=False)
    monkeypatch.delenv("MEDRAY_DEID_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


def _config(**args):
    return resolve_config(CONFIG, args=args, port=free_port())


def _prepare(home):
    """What a working first run has: a model, a token file, a key file and a running (here: listening) cluster."""
    weights = home / "w.pt"
    torch.save({"w": torch.zeros(3)}, weights)
    register(home / ".medray" / "registry", "nodule", weights, input_spec=SPEC)
    add_client(home / ".medray" / "tokens.json", "clinic-1", ["clinic"])
    ensure_key_file(home / ".medray" / "deid.key")
    dashboard = socket.create_server(("127.0.0.1", 0))
    state_file().write_text(json.dumps({"id": "test", "dashboard": f"http://127.0.0.1:{dashboard.getsockname()[1]}"}))
    return dashboard


def test_a_fresh_home_gets_one_line_per_problem_each_naming_its_fix(home):
    problems = preflight.check_serve_config(_config())
    assert problems == [
        "no model 'nodule' in ~/.medray/registry: train one with `python -m workloads.research.train --data SHARDS "
        "--labels LABELS --registry ~/.medray/registry --name nodule`, or run `make demo` and serve its model with "
        f"`medray serve --arg registry={os.getcwd()}/medray-demo/registry`",
        "no token file ~/.medray/tokens.json: create one with "
        "`medray token create --file ~/.medray/tokens.json --name clinic-1 --scope clinic`",
        "no key file ~/.medray/deid.key: create it with `medray key create ~/.medray/deid.key` "
        "(or copy the key that preprocessing used, so that pseudonyms match)",
        "no local cluster is running (no ~/.medray/local-cluster.json): start one with `medray up --local`",
    ]


def test_a_prepared_home_passes_every_check(home):
    with _prepare(home):
        assert preflight.check_serve_config(_config()) == []


def test_the_demo_registry_is_offered_when_it_holds_the_model(home, tmp_path):
    weights = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(3)}, weights)
    register(tmp_path / "medray-demo" / "registry", "nodule", weights, input_spec=SPEC)
    [line] = preflight.check_registry("~/.medray/registry", {"CT/CHEST": "nodule:latest"})
    assert f"`medray serve --arg registry={tmp_path}/medray-demo/registry`" in line


def test_registry_refs_versions_and_relative_paths(home):
    weights = home / "w.pt"
    torch.save({"w": torch.zeros(3)}, weights)
    register(home / "reg", "nodule", weights, input_spec=SPEC)
    assert preflight.check_registry(str(home / "reg"), {"CT/CHEST": "nodule:latest", "CT/*": "nodule:1"}) == []
    assert preflight.check_registry(str(home / "reg"), {"CT/CHEST": "nodule:2"}) == [
        "experts: model 'nodule' has no version 2; it has [1]"]
    assert "bad model name" in preflight.check_registry(str(home / "reg"), {"CT/CHEST": "Nodule"})[0]
    assert preflight.check_registry("reg", {})[0].startswith("registry 'reg' is a relative path")


def test_key_from_file_or_environment(home, monkeypatch):
    [line] = preflight.check_key(None)
    assert "$MEDRAY_DEID_KEY is unset" in line and "`medray key create ~/.medray/deid.key`" in line
    monkeypatch.setenv("MEDRAY_DEID_KEY", "ab" * 16)
    assert preflight.check_key(None) == []
    key = ensure_key_file(home / "deid.key")
    assert preflight.check_key(str(key)) == []
    key.chmod(0o644)
    assert preflight.check_key(str(key)) == [
        f"key file {key} is accessible by group or others (mode 0644): run `chmod 600 {key}`"]


def test_token_file_that_does_not_parse_or_has_no_clients(home):
    path = home / "tokens.json"
    path.write_text("{not json")
    path.chmod(0o600)
    assert preflight.check_tokens(str(path)) == [
        f"token file {path} cannot be read as JSON (JSONDecodeError): fix or recreate it"]
    path.write_text(json.dumps({"version": 1, "clients": []}))
    assert "has no clients" in preflight.check_tokens(str(path))[0]


def test_audit_log_directory_must_be_creatable(home):
    assert preflight.check_audit_log(str(home / "a" / "b" / "audit.jsonl")) == []
    (home / "file").write_text("")
    [line] = preflight.check_audit_log(str(home / "file" / "audit" / "d.jsonl"))
    assert line.startswith("audit log directory ~/file/audit cannot be created: ~/file is not a writable directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_audit_log_directory_must_be_writable(home):
    locked = home / "locked"
    locked.mkdir(mode=0o500)
    [line] = preflight.check_audit_log(str(locked / "audit" / "d.jsonl"))
    assert line.startswith("audit log directory ~/locked/audit cannot be created: ~/locked is not a writable")


def test_a_busy_port_fails_unless_this_clusters_process_holds_it(home):
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        [line] = preflight.check_port("127.0.0.1", port, cluster_id="ours")
        assert line.startswith(f"port {port} on 127.0.0.1 is not free") and f"--port {port + 1}`" in line
    # A process of the cluster (it carries the marker `medray up --local` gives them): a redeploy.
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import socket, time; s = socket.create_server(('127.0.0.1', {port})); "
                               "print('up', flush=True); time.sleep(60)"],
        env={**os.environ, _MARKER_ENV: "ours"}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "up"
        assert preflight.check_port("127.0.0.1", port, cluster_id="ours") == []
        assert preflight.check_port("127.0.0.1", port, cluster_id="another")[0].startswith(f"port {port}")
    finally:
        holder.kill()
        holder.wait()


def test_a_recorded_cluster_that_does_not_answer(home):
    state_file().parent.mkdir(parents=True)
    state_file().write_text(json.dumps({"id": "x", "dashboard": f"http://127.0.0.1:{free_port()}"}))
    [line] = preflight.check_cluster()
    assert "does not answer" in line and line.endswith("run `medray down`, then `medray up --local`")
    assert preflight.check_cluster(f"http://127.0.0.1:{free_port()}")[0].startswith("no Ray dashboard answers")


def test_serve_exits_2_in_seconds_without_deploying(home, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing may run before the checks pass"))
    start = time.monotonic()
    assert main(["serve", CONFIG, "--port", str(free_port())]) == 2
    assert time.monotonic() - start < 10
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert out.out == "" and len(lines) == 5 and all(line.startswith("medray serve: ") for line in lines)
    assert lines[-1] == "medray serve: nothing deployed (4 problem(s); `--no-check` skips these checks)"


def test_init_creates_the_key_and_a_token_once(home, capsys):
    config = _config()
    made = first_run(config)
    assert made[0].startswith("key file ~/.medray/deid.key created (0600)")
    assert made[1].startswith("token file ~/.medray/tokens.json created with client 'clinic-1' (scope clinic)")
    assert first_run(config) == []
    problems = preflight.check_serve_config(config)
    assert [p.split(" ")[:2] for p in problems] == [["no", "model"], ["no", "local"]]


def test_key_create_command_creates_once_and_keeps_an_existing_key(home, capsys):
    path = str(home / "k" / "deid.key")
    assert main(["key", "create", path]) == 0
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    first = open(path).read()
    assert main(["key", "create", path]) == 0
    assert open(path).read() == first and "kept" in capsys.readouterr().out.splitlines()[-1]


def test_failed_deployments_report_their_error_line():
    apps = {
        "diagnosis": {"status": "DEPLOYING", "deployments": {
            "Ingress": {"status": "DEPLOY_FAILED", "message": "The deployment failed to start 3 times in a row. "
                        "See controller logs for details. Error:\nTraceback (most recent call last):\n  File "
                        "\"x.py\", line 1\nmedray.errors.ConfigError: token file /t.json does not exist\n"},
            "Emergency": {"status": "UPDATING", "message": ""}}},
        "other": {"status": "DEPLOY_FAILED", "message": "Failed to build the app.\nmore", "deployments": {}},
        "ok": {"status": "RUNNING", "deployments": {"D": {"status": "HEALTHY"}}},
    }
    assert failures(apps) == [
        "diagnosis/Ingress: DEPLOY_FAILED: medray.errors.ConfigError: token file /t.json does not exist",
        "other: DEPLOY_FAILED: Failed to build the app.",
    ]


def test_the_real_command_in_a_fresh_home_prints_one_line_per_problem_and_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MEDRAY_HOME", "MEDRAY_DEID_KEY")}
    env["HOME"] = str(tmp_path)
    out = subprocess.run([str(REPO / ".venv" / "bin" / "medray"), "serve", "--port", str(free_port())],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout
    assert len(lines) == 5 and all(line.startswith("medray serve: ") and "`" in line for line in lines)
    assert [line.split(" ")[2:4] for line in lines[:4]] == [["no", "model"], ["no", "token"], ["no", "key"],
                                                           ["no", "local"]]
