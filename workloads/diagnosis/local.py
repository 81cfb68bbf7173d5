"""Run the diagnosis service (both lanes' applications) on the connected Ray cluster, on a free local port.

For the demo, the tests and the benchmark (an in-process cluster has no dashboard, so
``serve deploy`` cannot reach it). On a real or ``medray up --local`` cluster use ``medray serve``.
When a priority broker runs, the app hands its lanes to it (:func:`~workloads.diagnosis.app.build_app`).
"""

from __future__ import annotations

from typing import Any

from medray.broker.lanes import LANE_PREFIXES
from medray.cluster.local_serve import LocalApp, free_port, serve_local
from workloads.diagnosis.app import APP_NAME, build_app, build_emergency_app, lane_apps, unwatch_lanes
from workloads.diagnosis.config import DiagnosisArgs

__all__ = ["free_port", "http_targets", "run_local", "stop_local"]


def run_local(args: dict[str, Any] | DiagnosisArgs, *, port: int | None = None,
              proxy_location: str = "HeadOnly") -> str:
    """Start Serve on 127.0.0.1 (a free port unless given), deploy both lanes' applications (routine
    first: it holds the model catalog); returns the base URL.

    The apps hand their lanes to the priority broker when one runs, unless ``args.broker`` is false
    (:func:`medray.cluster.local_serve.serve_local` says why the port is a free one).
    """
    args = args if isinstance(args, DiagnosisArgs) else DiagnosisArgs.model_validate(args)
    names = lane_apps(args.app_name)
    return serve_local([LocalApp(build_app(args), names["routine"]),
                        LocalApp(build_emergency_app(args), names["emergency"], LANE_PREFIXES["emergency"])],
                       port=port, proxy_location=proxy_location)


def http_targets(app_name: str = APP_NAME, *, host: str | None = None) -> list[str]:
    """Base URLs that take the app's HTTP traffic, as a load balancer in front of the cluster needs them.

    On a medray cluster these are the nodes' HAProxy front doors (:mod:`medray.cluster.ingress`;
    one per node with ``proxy_location: EveryNode``, the head's with ``HeadOnly``), which forward to
    the lanes' replicas. Under ``MEDRAY_INGRESS=proxy`` they are Serve's Python proxies; with direct
    ingress and no HAProxy (``MEDRAY_INGRESS=proxy RAY_SERVE_THROUGHPUT_OPTIMIZED=1``) they are the
    ingress replicas themselves, over which clients must spread. ``host`` replaces the nodes'
    addresses, e.g. ``127.0.0.1`` for :func:`run_local`, which listens there.
    """
    import ray
    from ray.serve.context import _get_global_client

    # Serve has no public call for its target groups yet: this is the one its own proxies use.
    groups = ray.get(_get_global_client()._controller.get_target_groups.remote(app_name))
    return sorted({f"http://{host or t.ip}:{t.port}" for g in groups
                   if str(getattr(g.protocol, "value", g.protocol)).upper() == "HTTP" for t in g.targets})


def stop_local() -> None:
    """Shut Serve down (applications, proxies, controller), freeing the cluster's resources."""
    from ray import serve

    unwatch_lanes()
    serve.shutdown()
