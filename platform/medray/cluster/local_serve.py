"""Ray Serve applications on the connected cluster, named by import path, on a free port of 127.0.0.1.

What ``serve run config.yaml`` does, for a cluster without a dashboard (the in-process local
cluster of the demo, the tests and the benchmarks: ``serve deploy`` cannot reach it). The caller
names each application by import path, so it need not import it: an application builder is
called with ``args``, as Serve calls one.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medray.errors import ConfigError

if TYPE_CHECKING:
    from ray.serve import Application

__all__ = ["LocalApp", "free_port", "serve_local"]


@dataclass(frozen=True)
class LocalApp:
    """One application to deploy: an Application or the import path of one or of its builder."""

    target: Any  # str | Application
    name: str
    route_prefix: str = "/"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _application(target: str | Application, args: Mapping[str, Any] | None) -> Application:
    from ray.serve import Application

    if isinstance(target, Application):
        return target
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"application {target!r} must be an import path 'package.module:app'")
    app = getattr(importlib.import_module(module), name)
    if callable(app) and not isinstance(app, Application):
        app = app(dict(args or {}))
    if not isinstance(app, Application):
        raise ConfigError(f"{target} is neither a Serve application nor a builder returning one")
    return app


def serve_local(apps: Sequence[LocalApp], args: Mapping[str, Any] | None = None, *, port: int | None = None,
                proxy_location: str = "HeadOnly") -> str:
    """Start Serve on 127.0.0.1 (a free port unless given) and deploy ``apps`` in order; the base URL.

    Builders are called with ``args``. A fixed port shared with other Serve instances on this
    machine would let the kernel hand our connections to their proxies (Serve binds with
    SO_REUSEPORT): hence a free port by default.
    """
    from ray import serve

    built = [(_application(app.target, args), app) for app in apps]
    port = port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location=proxy_location)
    for application, app in built:
        serve.run(application, name=app.name, route_prefix=app.route_prefix)
    return f"http://127.0.0.1:{port}"
