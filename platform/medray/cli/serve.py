"""``medray serve``: deploy a Ray Serve config (by default the diagnosis service) on the local cluster.

medray never imports its workloads: the config names the application by import path
(``workloads.diagnosis:app``) and Serve imports it on the cluster. This command validates the
config with Serve's own schema, applies ``--arg`` overrides to the applications' ``args``, and
runs ``serve deploy`` against the cluster's dashboard (``medray up --local`` starts one), then waits
until every application is running. ``--foreground`` uses ``serve run`` instead (no dashboard
needed; Ctrl-C stops the service).

Before deploying it checks what the replicas would otherwise fail on (:mod:`medray.cli.preflight`):
every problem is one line naming its fix, exit code 2, nothing deployed. ``--init`` first creates
what a first run lacks and can be made here (the key file, a token file with one clinic client);
a deploy that fails anyway stops at the first failed deployment and prints its error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medray.errors import ConfigError, MedrayError

__all__ = ["DEFAULT_CONFIG", "add_parser", "failures", "first_run", "resolve_config", "run"]

DEFAULT_CONFIG = "deploy/serve-diagnosis.yaml"


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def resolve_config(path: str | Path, *, args: dict[str, Any] | None = None,
                   port: int | None = None) -> dict[str, Any]:
    """Read a Serve config, set ``args`` on every application and the HTTP port; validate it."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        config = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"Serve config {path} not found: run from the repository root or pass its path") from None
    if not isinstance(config, dict):
        raise ConfigError(f"Serve config {path} is not a mapping")
    for app in config.get("applications") or []:
        app["args"] = {**(app.get("args") or {}), **(args or {})}
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as e:
        raise ConfigError(f"Serve config {path} is invalid:\n{e}") from None
    return config


def _ray_cli(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _dashboard_address() -> str:
    from medray.cluster.local import state_file

    if state_file().exists():
        return json.loads(state_file().read_text())["dashboard"]
    return "http://127.0.0.1:8265"


_FAILED = ("DEPLOY_FAILED", "UNHEALTHY")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    # Serve's message is a generic sentence, then "Error:" and the replica's traceback, whose
    # last line (the exception raised by the constructor, which sees no request data) says why.
    return (lines[-1] if "Traceback" in text else lines[0])[:400]


def failures(apps: dict[str, Any]) -> list[str]:
    """One line per failed deployment (else failed application) of ``serve status``'s ``applications``."""
    lines = []
    for name, app in apps.items():
        failed = [f"{name}/{d}: {dep.get('status')}: {_last_line(dep.get('message') or '')}"
                  for d, dep in (app.get("deployments") or {}).items()
                  if dep.get("status") in _FAILED]
        if not failed and app.get("status") in _FAILED:
            failed = [f"{name}: {app.get('status')}: {_last_line(app.get('message') or '')}"]
        lines += failed
    return lines


def _wait_running(address: str, env: dict[str, str], timeout_s: float) -> dict[str, str]:
    import yaml

    deadline = time.monotonic() + timeout_s
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        out = subprocess.run([_ray_cli("serve"), "status", "--address", address], env=env,
                             capture_output=True, text=True)
        if out.returncode == 0:
            apps = (yaml.safe_load(out.stdout) or {}).get("applications") or {}
            statuses = {name: app.get("status", "?") for name, app in apps.items()}
            if statuses and all(s == "RUNNING" for s in statuses.values()):
                return statuses
            if failed := failures(apps):
                raise MedrayError("the deploy failed:\n  " + "\n  ".join(failed)
                                  + f"\n(details: `serve status --address {address}`; "
                                    "`medray serve --stop` removes the failed application)")
        time.sleep(2)
    raise MedrayError(f"applications not running after {timeout_s:.0f} s: {statuses}; "
                      f"see `serve status --address {address}`")


def first_run(config: dict[str, Any]) -> list[str]:
    """Create what the config's ``args`` name but a fresh machine lacks (key file, token file); say what."""
    from medray.cli.key import create_key
    from medray.cli.preflight import DEFAULT_TOKEN_CLIENT, shown
    from medray.security.tokens import add_client

    done = []
    for app in config.get("applications") or []:
        args = app.get("args") or {}
        for arg in ("key_file", "audit_key_file"):
            if args.get(arg) and not (path := Path(os.path.expanduser(args[arg]))).exists():
                done.append(create_key(str(path)) if path.is_absolute() else f"{arg} is relative: not created")
        if args.get("tokens") and (path := Path(os.path.expanduser(args["tokens"]))).is_absolute() \
                and not path.exists():
            name, scope = DEFAULT_TOKEN_CLIENT
            token = add_client(path, name, [scope])
            done.append(f"token file {shown(path)} created with client {name!r} (scope {scope}); its token, "
                        f"shown only this once: {token}")
    return done


def run(args: argparse.Namespace) -> int:
    """Deploy (or ``--foreground`` run, or ``--stop``) the config's applications; wait until RUNNING."""
    from medray.cluster.local import state_file

    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    address = args.address or _dashboard_address()
    if args.stop:
        subprocess.run([_ray_cli("serve"), "shutdown", "-y", "--address", address], env=env, check=True)
        print("Serve applications shut down")
        return 0
    overrides: dict[str, Any] = {}
    for item in args.arg or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--arg takes KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)
    config = resolve_config(args.config, args=overrides, port=args.port)
    if args.init:
        for line in first_run(config):
            print(line)
    if not args.no_check:
        from medray.cli.preflight import check_serve_config

        problems = check_serve_config(config, address=args.address, cluster=not args.foreground)
        for problem in problems:
            print(f"medray serve: {problem}", file=sys.stderr)
        if problems:
            print(f"medray serve: nothing deployed ({len(problems)} problem(s); `--no-check` skips these checks)",
                  file=sys.stderr)
            return 2
    resolved = state_file().parent / f"serve-{Path(args.config).stem}.resolved.yaml"
    resolved.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    resolved.write_text(yaml.safe_dump(config, sort_keys=False))
    if args.foreground:
        return subprocess.run([_ray_cli("serve"), "run", str(resolved)], env=env).returncode
    subprocess.run([_ray_cli("serve"), "deploy", str(resolved), "--address", address], env=env, check=True)
    statuses = _wait_running(address, env, args.timeout)
    http = config.get("http_options") or {}
    base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    for app in config.get("applications") or []:
        prefix = (app.get("route_prefix") or "/").rstrip("/")
        print(f"{app['name']}: {statuses.get(app['name'])} at {base}{prefix}/ (API docs: {base}{prefix}/docs)")
    return 0


def add_parser(subparsers: Any) -> None:
    """Add the ``serve`` command to ``medray``'s subparsers."""
    p = subparsers.add_parser("serve", help="deploy the diagnosis service (a Serve config) on the local cluster")
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help=f"Serve config (default: {DEFAULT_CONFIG})")
    p.add_argument("--arg", action="append", metavar="KEY=VALUE",
                   help="set an application argument (VALUE as JSON if it parses, else a string); "
                        "use absolute paths: replicas do not run in this directory")
    p.add_argument("--port", type=int, help="HTTP port of the Serve proxies (default: the config's)")
    p.add_argument("--address", help="dashboard address (default: the `medray up --local` cluster's)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for RUNNING")
    p.add_argument("--foreground", action="store_true", help="`serve run` in this terminal instead of deploying")
    p.add_argument("--stop", action="store_true", help="shut down every Serve application of the cluster")
    p.add_argument("--init", action="store_true",
                   help="first run: create the key file and a token file (one clinic client) the config names, "
                        "if absent, then check and deploy")
    p.add_argument("--no-check", action="store_true",
                   help="deploy without first checking models, token file, key, audit log, port and cluster")
    p.set_defaults(func=run)
