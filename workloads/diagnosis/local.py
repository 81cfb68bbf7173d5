"""Run the diagnosis application on the Ray cluster this process is connected to, on a free local port.

For the demo, the tests and the benchmark (an in-process cluster has no dashboard, so
``serve deploy`` cannot reach it). On a real or ``medray up --local`` cluster use ``medray serve``.
When a priority broker runs, the app hands its lanes to it (:func:`~workloads.diagnosis.app.build_app`).
"""

from __future__ import annotations

import socket
from typing import Any

from workloads.diagnosis.app import APP_NAME, build_app, unwatch_lanes
from workloads.diagnosis.config import DiagnosisArgs

__all__ = ["free_port", "run_local", "stop_local"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_local(args: dict[str, Any] | DiagnosisArgs, *, port: int | None = None,
              proxy_location: str = "HeadOnly") -> str:
    """Start Serve on 127.0.0.1 (a free port unless given), deploy the app; returns its base URL.

    The app hands its lanes to the priority broker when one runs, unless ``args.broker`` is false.

    A fixed port shared with other Serve instances on this machine would let the kernel hand our
    connections to their proxies (Serve binds with SO_REUSEPORT): hence a free port by default.
    """
    from ray import serve

    port = port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location=proxy_location)
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    return f"http://127.0.0.1:{port}"


def stop_local() -> None:
    """Shut Serve down (applications, proxies, controller), freeing the cluster's resources."""
    from ray import serve

    unwatch_lanes()
    serve.shutdown()
