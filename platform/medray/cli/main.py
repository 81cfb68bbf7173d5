"""The ``medray`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from medray.cli import audit as audit_cli
from medray.cli import auth as auth_cli
from medray.cli import serve as serve_cli
from medray.errors import MedrayError

__all__ = ["main"]


def _cmd_up(args: argparse.Namespace) -> int:
    from medray.cluster.local import up

    if not args.local:
        print("only `medray up --local` is built in; for a real fleet use "
              "`ray up cluster.yaml` or `medray kuberay | kubectl apply -f -`", file=sys.stderr)
        return 2
    state = up(args.config, timeout_s=args.timeout)
    print(f"local cluster up: {len(state['node_types'])} nodes ({', '.join(state['node_types'])})")
    print(f"address {state['address']}  dashboard {state['dashboard']}")
    print("connect with ray.init(address='auto'); for `ray job submit` and `serve deploy` first run")
    print(f"  {state['job_submit_env']}")
    print("stop with `medray down`")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from medray.cluster.local import down

    print("local cluster stopped" if down() else "no local cluster is recorded as up")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from medray.cluster.local import enable_client_token_auth, running_state

    enable_client_token_auth()  # before Ray reads its config at import
    import ray

    from medray.broker.client import broker_summary
    from medray.cli.status import format_broker_summary
    from medray.cluster.status import format_table, node_rows

    state = running_state()
    address = args.address or (state["address"] if state else "auto")
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        rows = node_rows()
        broker = broker_summary(events=100 if args.broker else 20)
    finally:
        ray.shutdown()
    if args.broker:
        print(json.dumps(broker, indent=2))
    elif args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        print()
        print(format_broker_summary(broker))
    return 0


def _cmd_ray_start(args: argparse.Namespace) -> int:
    import shlex

    from medray.cluster.local import full_node_spec, ray_start_command
    from medray.cluster.node_types import load_node_types

    types = {t.name: t for t in load_node_types(args.config)}
    if args.node_type not in types:
        raise MedrayError(f"no node type {args.node_type!r}; cluster.yaml has {sorted(types)}")
    spec = full_node_spec(types[args.node_type])
    cmd = ray_start_command(spec, head_address=None if spec.is_head else args.address)
    print("RAY_AUTH_MODE=token " + shlex.join(cmd))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from medray.data.cohort import generate_cohort

    s = generate_cohort(args.out, patients=args.patients, seed=args.seed, rows=args.rows,
                        slices=args.slices)
    print(f"{s.patients} patients ({s.with_nodule} with a nodule), {s.series} series, "
          f"{s.dicom_files} DICOM files -> {s.out_dir}")
    return 0


def _cmd_kuberay(args: argparse.Namespace) -> int:
    import yaml

    from medray.cluster.kuberay import raycluster_manifest
    from medray.cluster.node_types import load_cluster_config

    manifest = raycluster_manifest(load_cluster_config(args.config), namespace=args.namespace)
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from medray.models.registry import list_models

    for m in list_models(args.registry):
        metrics = " ".join(f"{k}={v:.3f}" for k, v in sorted(m.metrics.items()))
        print(f"{m.ref:24} {m.created}  {metrics}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medray.demo.runner import run_demo

    run_demo(args.out, config=args.config, patients=args.patients, seed=args.seed,
             only=set(args.only) if args.only else None)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medray", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the embedded multi-role cluster on this machine")
    up.add_argument("--local", action="store_true", help="one scaled-down node per node type here")
    up.add_argument("--config", help="cluster yaml (default: ./cluster.yaml or the shipped one)")
    up.add_argument("--timeout", type=float, default=300,
                    help="seconds to wait for all nodes and the job server (default 300)")
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser("down", help="stop the local cluster")
    down.set_defaults(func=_cmd_down)

    st = sub.add_parser("status", help="nodes with role, site, storage, accelerator, GPU health")
    st.add_argument("--json", action="store_true", help="a JSON list of node objects")
    st.add_argument("--broker", action="store_true",
                    help="the priority broker's state and last 100 decisions as JSON")
    st.add_argument("--address", help="Ray address (default: the local cluster of `medray up`, "
                    "else the latest one started here)")
    st.set_defaults(func=_cmd_status)

    rs = sub.add_parser("ray-start", help="print the `ray start` command of an on-prem node of a type")
    rs.add_argument("node_type")
    rs.add_argument("--address", default="HEAD_IP:6379", help="head address for worker nodes")
    rs.add_argument("--config")
    rs.set_defaults(func=_cmd_ray_start)

    sy = sub.add_parser("synth", help="write a synthetic CT + EMR cohort")
    sy.add_argument("--patients", type=int, required=True)
    sy.add_argument("--out", required=True)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--rows", type=int, default=128, help="pixels per slice side")
    sy.add_argument("--slices", type=int, default=20, help="slices per series")
    sy.set_defaults(func=_cmd_synth)

    kr = sub.add_parser("kuberay", help="print a KubeRay RayCluster manifest for cluster.yaml")
    kr.add_argument("--config")
    kr.add_argument("--namespace", default="medray")
    kr.set_defaults(func=_cmd_kuberay)

    mo = sub.add_parser("models", help="list the models of a registry")
    mo.add_argument("--registry", required=True)
    mo.set_defaults(func=_cmd_models)

    de = sub.add_parser("demo", help="the end-to-end demo on the embedded local cluster")
    de.add_argument("--out", default="medray-demo")
    de.add_argument("--config")
    de.add_argument("--patients", type=int, default=24)
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--only", nargs="*", help="run only these stages (e.g. cluster placement)")
    de.set_defaults(func=_cmd_demo)

    audit_cli.add_parser(sub)  # medray audit verify PATH
    auth_cli.add_parser(sub)   # medray token create|list|revoke
    serve_cli.add_parser(sub)  # medray serve [CONFIG]
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medray`` console script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MedrayError as e:
        print(f"medray: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
