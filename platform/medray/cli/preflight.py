"""What ``medray serve`` checks before it deploys: each problem is one line that names its fix.

Without these checks a missing model, token file or key only shows as ``DEPLOY_FAILED`` after every
replica retried, with the reason inside their tracebacks. medray never imports its workloads, so
the checks read the applications' ``args`` by their well-known names (those of
``workloads.diagnosis.config.DiagnosisArgs``) and skip the names an application does not use:
``registry`` + ``experts``, ``tokens``, ``key_file`` (else ``$MEDRAY_DEID_KEY``), ``audit_key_file``,
``audit_log``; then the HTTP port and the cluster. Nothing is created or changed here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medray.errors import MedrayError

__all__ = [
    "DEFAULT_TOKEN_CLIENT",
    "check_audit_log",
    "check_cluster",
    "check_key",
    "check_port",
    "check_registry",
    "check_serve_config",
    "check_tokens",
    "shown",
]

# The client that the fix lines (and `medray serve --init`) create a token for.
DEFAULT_TOKEN_CLIENT = ("clinic-1", "clinic")
# Named, never imported: the application that pseudonymises with the de-identification key.
_KEYED_APP = "workloads.diagnosis:"


def shown(path: str | Path) -> str:
    """``path`` as a user would type it: the home directory as ``~``."""
    text, home = str(path), str(Path.home())
    return "~" + text[len(home):] if text == home or text.startswith(home + os.sep) else text


def _expand(value: str) -> Path:
    return Path(os.path.expanduser(value))


def _relative(name: str, value: str) -> str | None:
    if _expand(value).is_absolute():
        return None
    return (f"{name} {value!r} is a relative path: replicas do not run in this directory, "
            f"pass an absolute one with `--arg {name}=/…`")


def _model_fix(root: Path, name: str, ref: str) -> str:
    from medray.models.registry import resolve

    demo = Path.cwd() / "medray-demo" / "registry"  # where `make demo` registers its model
    try:
        resolve(demo, ref)
        return (f"serve the demo's with `medray serve --arg registry={demo}`, or copy it: "
                f"`mkdir -p {shown(root)} && cp -r {demo / name} {shown(root)}/`")
    except MedrayError:
        return (f"train one with `python -m workloads.research.train --data SHARDS --labels LABELS --registry "
                f"{shown(root)} --name {name}`, or run `make demo` and serve its model with "
                f"`medray serve --arg registry={demo}`")


def check_registry(registry: str, experts: Mapping[str, str]) -> list[str]:
    """The registry holds (and verifies) every model that ``experts`` routes to."""
    from medray.models.registry import parse_ref, resolve

    if problem := _relative("registry", registry):
        return [problem]
    root, problems = _expand(registry), []
    for ref in dict.fromkeys(experts.values()):
        try:
            name, _ = parse_ref(ref)
            resolve(root, ref)
        except MedrayError as e:
            if str(e).startswith("no model named"):
                problems.append(f"no model {name!r} in {shown(root)}: {_model_fix(root, name, ref)}")
            else:
                problems.append(f"experts: {e}")
    return problems


def check_tokens(tokens: str) -> list[str]:
    """The token file exists, parses and has at least one client."""
    from medray.security.tokens import load_tokens

    if problem := _relative("tokens", tokens):
        return [problem]
    path = _expand(tokens)
    name, scope = DEFAULT_TOKEN_CLIENT
    create = f"`medray token create --file {shown(path)} --name {name} --scope {scope}`"
    if not path.exists():
        return [f"no token file {shown(path)}: create one with {create}"]
    try:
        store = load_tokens(path)
    except MedrayError as e:
        return [str(e)]
    if not store.by_hash:
        return [f"token file {shown(path)} has no clients, so every request would be refused: add one with {create}"]
    return []


def check_key(key_file: str | None, *, arg: str = "key_file") -> list[str]:
    """The pseudonym key loads: from ``key_file``, else (``None``) from ``$MEDRAY_DEID_KEY``."""
    from medray.privacy.pseudonym import KEY_ENV, load_key

    if key_file is None:
        if os.environ.get(KEY_ENV) is None:
            default = "~/.medray/deid.key"
            return [f"no {arg} set and ${KEY_ENV} is unset: create a key with `medray key create {default}` "
                    f"and pass `--arg {arg}={default}` (or set ${KEY_ENV} where `ray start` runs)"]
        path = None
    elif problem := _relative(arg, key_file):
        return [problem]
    else:
        path = _expand(key_file)
        if not path.exists():
            return [f"no key file {shown(path)}: create it with `medray key create {shown(path)}` "
                    "(or copy the key that preprocessing used, so that pseudonyms match)"]
    try:
        load_key(path)
    except MedrayError as e:
        return [str(e)]
    return []


def check_audit_log(audit_log: str) -> list[str]:
    """The audit log can be appended to, or its directory created."""
    if problem := _relative("audit_log", audit_log):
        return [problem]
    path = _expand(audit_log)
    if path.is_dir():
        return [f"audit_log {shown(path)} is a directory: pass a file path with `--arg audit_log=/…/diagnosis.jsonl`"]
    if path.exists():
        return [] if os.access(path, os.W_OK) else [
            f"audit log {shown(path)} is not writable: fix its owner or mode, or pass another `--arg audit_log=…`"]
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"audit log directory {shown(path.parent)} cannot be created: {shown(parent)} is not a writable "
                "directory; fix its owner or mode, or pass another `--arg audit_log=…`"]
    return []


def _listening(port: int, cluster_id: str) -> bool:
    """Whether a process of the local cluster ``cluster_id`` listens on ``port``."""
    import psutil

    from medray.cluster.local import cluster_processes

    for proc in cluster_processes(cluster_id):
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in proc.net_connections("tcp")):
                return True
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return False


def check_port(host: str, port: int, *, cluster_id: str | None = None) -> list[str]:
    """``host:port`` is free, or already served by the local cluster ``cluster_id`` (a redeploy)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's TIME_WAIT is no user
        try:
            s.bind((host, port))
            return []
        except PermissionError:
            return [f"port {port} needs privileges to bind: pick one above 1023 with `medray serve --port 8000`"]
        except OSError as e:
            reason = e.strerror
    if cluster_id and _listening(port, cluster_id):
        return []
    return [f"port {port} on {host} is not free ({reason}): stop what listens there "
            f"(`ss -ltnp 'sport = :{port}'` shows it) or pick another with `medray serve --port {port + 1}`"]


def _answers(url: str, timeout_s: float = 1.0) -> bool:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_cluster(address: str | None = None) -> list[str]:
    """A cluster answers: the dashboard at ``address``, else the one ``medray up --local`` recorded."""
    from medray.cluster.local import running_state, state_file

    if address:
        return [] if _answers(address) else [
            f"no Ray dashboard answers at {address}: start the cluster, or drop --address to use `medray up --local`'s"]
    state = running_state()
    if state is None:
        return [f"no local cluster is running (no {shown(state_file())}): start one with `medray up --local`"]
    if not _answers(state["dashboard"]):
        return [f"the local cluster recorded in {shown(state_file())} does not answer at {state['dashboard']}: "
                "run `medray down`, then `medray up --local`"]
    return []


def check_serve_config(config: Mapping[str, Any], *, address: str | None = None,
                       cluster: bool = True) -> list[str]:
    """Every problem that would keep ``config``'s applications from starting, one line each.

    ``address`` is the dashboard given on the command line (None: the local cluster's);
    ``cluster=False`` skips the cluster check (``serve run`` starts one if needed).
    """
    from medray.cluster.local import running_state

    problems: list[str] = []
    for app in config.get("applications") or []:
        args = app.get("args") or {}
        if "registry" in args:
            problems += check_registry(str(args["registry"]), args.get("experts") or {})
        if "tokens" in args:
            problems += check_tokens(str(args["tokens"]))
        # The diagnosis app always needs the key: without key_file its replicas read $MEDRAY_DEID_KEY.
        if "key_file" in args or str(app.get("import_path", "")).startswith(_KEYED_APP):
            problems += check_key(args.get("key_file"))
        if args.get("audit_key_file"):
            problems += check_key(str(args["audit_key_file"]), arg="audit_key_file")
        if "audit_log" in args:
            problems += check_audit_log(str(args["audit_log"]))
    if cluster:
        problems += check_cluster(address)
    if not address:
        http = config.get("http_options") or {}
        state = running_state()
        problems += check_port(http.get("host", "127.0.0.1"), int(http.get("port", 8000)),
                               cluster_id=state["id"] if state else None)
    return list(dict.fromkeys(problems))
