"""The embedded local cluster: one scaled-down Ray node per node type of ``cluster.yaml``.

Two ways to run it, both from the same node specs:

* :func:`local_cluster` — in-process (``ray.cluster_utils.Cluster``), for tests and notebooks.
* :func:`up` / :func:`down` — persistent ``ray start`` processes (``medray up --local``), so that
  ``ray job submit``, Serve, notebooks and ``ray.init(address="auto")`` connect to it. The same
  ``ray start`` flags, minus the scaling, are what an on-prem node of that type runs.

Without physical GPUs, GPU node types get logical GPUs (Ray then schedules as if they were there;
torch sees no device and runs on the CPU) and the label ``medray.io/simulated-gpu=true``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medray.cluster.ingress import ingress_dir, ingress_env
from medray.cluster.node_types import SIMULATED_GPU_LABEL, NodeType, load_node_types
from medray.cluster.nvml import physical_gpu_count
from medray.errors import MedrayError

__all__ = [
    "LocalNodeSpec",
    "full_node_spec",
    "local_node_specs",
    "ray_start_command",
    "LocalCluster",
    "local_cluster",
    "up",
    "down",
    "cluster_processes",
    "running_state",
    "enable_client_token_auth",
    "connect",
    "state_file",
]

_MIB = 1024**2


@dataclass(frozen=True)
class LocalNodeSpec:
    """How one node of a node type is started (``object_store_memory`` 0: Ray's default)."""

    node_type: NodeType
    num_cpus: float
    num_gpus: float
    resources: dict[str, float]
    labels: dict[str, str]
    object_store_memory: int = 0

    @property
    def is_head(self) -> bool:
        return self.node_type.is_head


def full_node_spec(node_type: NodeType) -> LocalNodeSpec:
    """The unscaled spec of a real node of this type (on-prem ``ray start``)."""
    return LocalNodeSpec(node_type=node_type, num_cpus=node_type.cpus, num_gpus=node_type.gpus,
                         resources=dict(node_type.custom_resources), labels=dict(node_type.labels))


def local_node_specs(
    node_types: Sequence[NodeType] | None = None,
    *,
    max_cpus_per_node: float = 2,
    object_store_mib: int = 128,
    simulate_gpus: bool | None = None,
) -> list[LocalNodeSpec]:
    """Scale each node type down to fit one machine; the head comes first.

    ``simulate_gpus`` defaults to "this machine has no GPU".
    """
    types = list(node_types) if node_types is not None else load_node_types()
    if simulate_gpus is None:
        simulate_gpus = physical_gpu_count() == 0
    specs = []
    for t in sorted(types, key=lambda t: (not t.is_head, t.name)):
        labels = dict(t.labels)
        resources = dict(t.custom_resources)
        num_gpus = min(t.gpus, 1.0)
        if num_gpus:
            # What Ray's `accelerator_type=` option counts; Ray adds it itself on real GPUs.
            resources[f"accelerator_type:{t.accelerator}"] = 1.0
            if simulate_gpus:
                labels[SIMULATED_GPU_LABEL] = "true"
        specs.append(
            LocalNodeSpec(
                node_type=t,
                num_cpus=min(t.cpus, max_cpus_per_node) if not t.is_head else 1.0,
                num_gpus=num_gpus,
                resources=resources,
                labels=labels,
                object_store_memory=object_store_mib * _MIB,
            )
        )
    if not specs or not specs[0].is_head:
        raise MedrayError("cluster config has no head node type: set head_node_type")
    return specs


def _node_args(spec: LocalNodeSpec) -> dict[str, Any]:
    return {
        "num_cpus": spec.num_cpus,
        "num_gpus": spec.num_gpus,
        "resources": spec.resources,
        "labels": spec.labels,
        "object_store_memory": spec.object_store_memory,
    }


def ray_start_command(spec: LocalNodeSpec, head_address: str | None = None) -> list[str]:
    """The ``ray start`` command line for a node of this spec (head when ``head_address`` is None)."""
    cmd = ["ray", "start"]
    if head_address is None:
        cmd += ["--head", "--dashboard-host=127.0.0.1", "--disable-usage-stats"]
    else:
        cmd += [f"--address={head_address}"]
    cmd += [
        f"--num-cpus={spec.num_cpus:g}",
        f"--num-gpus={spec.num_gpus:g}",
        f"--labels={','.join(f'{k}={v}' for k, v in sorted(spec.labels.items()))}",
    ]
    if spec.object_store_memory:
        cmd.append(f"--object-store-memory={spec.object_store_memory}")
    if spec.resources:
        cmd.append(f"--resources={json.dumps(spec.resources, sort_keys=True)}")
    return cmd


class LocalCluster:
    """An in-process multi-node Ray cluster; use :func:`local_cluster` as a context manager."""

    def __init__(self, specs: Sequence[LocalNodeSpec]) -> None:
        from ray.cluster_utils import Cluster

        head, *workers = specs
        self.specs = list(specs)
        # A node's processes inherit this process's environment when the node starts: the HAProxy
        # front door's settings (medray.cluster.ingress), with files of its own per node. Only the
        # nodes get them: this process (a notebook, a test) keeps its own Serve settings, so that
        # its handles work from synchronous code.
        self._id = uuid.uuid4().hex
        with self._node_env(0):
            self._cluster = Cluster(
                initialize_head=True,
                # Ray gives worker nodes a random agent port but the head its fixed default, which
                # another Ray cluster on this machine (a notebook's, `medray up`) may hold.
                head_node_args={**_node_args(head), "include_dashboard": False,
                                "dashboard_agent_listen_port": _free_port()},
            )
        for i, spec in enumerate(workers, 1):
            with self._node_env(i):
                self._cluster.add_node(wait=False, **_node_args(spec))
        self._cluster.wait_for_nodes()

    @contextmanager
    def _node_env(self, index: int) -> Iterator[None]:
        saved = dict(os.environ)
        os.environ.update(ingress_env(ingress_dir(self._id, index), env=saved))
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @property
    def address(self) -> str:
        """GCS address to pass to ``ray.init(address=…)``."""
        return self._cluster.address

    def add_node(self, spec: LocalNodeSpec) -> Any:
        """Start one more node (e.g. a second node of a type); returns Ray's node handle."""
        with self._node_env(len(self._cluster.list_all_nodes())):
            node = self._cluster.add_node(**_node_args(spec))
        self.specs.append(spec)
        return node

    def remove_node(self, node: Any) -> None:
        """Stop a node started with :meth:`add_node`."""
        self._cluster.remove_node(node)

    def shutdown(self) -> None:
        """Disconnect this process and stop every node."""
        import ray

        ray.shutdown()
        self._cluster.shutdown()
        shutil.rmtree(ingress_dir(self._id, 0).parent, ignore_errors=True)


@contextmanager
def local_cluster(
    config: str | Path | None = None, *, connect: bool = True, log_to_driver: bool = True,
    **scale: Any,
) -> Iterator[LocalCluster]:
    """Start the embedded cluster for ``config`` in-process, connect to it, stop it on exit.

    ``log_to_driver=False`` keeps the workers' output in the cluster's log files.

    ``scale`` goes to :func:`local_node_specs` (``max_cpus_per_node``, ``object_store_mib``…).
    """
    import ray

    cluster = LocalCluster(local_node_specs(load_node_types(config), **scale))
    try:
        if connect:
            ray.init(address=cluster.address, log_to_driver=log_to_driver)
            from medray.cluster.guard import start_guards

            start_guards()  # as on every medray cluster: a guard on each GPU node
        yield cluster
    finally:
        cluster.shutdown()


def state_file() -> Path:
    """Where ``medray up --local`` records the running cluster (address, node types)."""
    return Path(os.environ.get("MEDRAY_HOME", Path.home() / ".medray")) / "local-cluster.json"


# Every process of a persistent local cluster inherits this variable, so `down` stops exactly that
# cluster's processes and never another Ray cluster of the same user (tests, notebooks).
_MARKER_ENV = "MEDRAY_LOCAL_CLUSTER_ID"


def _ray_env(cluster_id: str = "", ingress_dir: Path | None = None) -> dict[str, str]:
    # Token auth on: `ray start --head` creates ~/.ray/auth_token, later nodes read it.
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    if cluster_id:
        env[_MARKER_ENV] = cluster_id
    if ingress_dir is not None:  # a node's start: the HAProxy front door's settings, files of its own
        env.update(ingress_env(ingress_dir))
    return env


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def up(config: str | Path | None = None, *, timeout_s: float = 300, **scale: Any) -> dict[str, Any]:
    """Start the persistent local cluster with ``ray start``; returns what it records in :func:`state_file`.

    ``timeout_s`` bounds the whole start: every node alive and the job server accepting jobs.
    """
    if state_file().exists():
        raise MedrayError(f"a local cluster is already up ({state_file()}): run `medray down` first")
    specs = local_node_specs(load_node_types(config), **scale)
    subprocess.run([_ray_cli(), "get-auth-token", "--generate"], env=_ray_env(), check=True,
                   capture_output=True)
    cluster_id = uuid.uuid4().hex
    address = f"{_node_ip()}:{_free_port()}"
    head, *workers = specs
    deadline = time.monotonic() + timeout_s
    try:
        _run_ray_start([*ray_start_command(head), f"--port={address.rsplit(':', 1)[1]}"], cluster_id,
                       ingress_dir(cluster_id, 0))
        for i, spec in enumerate(workers, 1):
            _run_ray_start(ray_start_command(spec, head_address=address), cluster_id, ingress_dir(cluster_id, i))
        _wait_for_nodes(address, len(specs), deadline)
        _wait_for_job_api(cluster_id, deadline)
        # The GPU guards start with the cluster, as the head's start command does on a real one.
        subprocess.run([sys.executable, "-m", "medray", "guards", "--address", address], env=_ray_env(),
                       check=True, capture_output=True, timeout=max(10.0, deadline - time.monotonic()))
    except BaseException:
        _stop_marked(cluster_id)  # never leave half a cluster behind
        raise
    state = {
        "id": cluster_id,
        "address": address,
        "dashboard": "http://127.0.0.1:8265",
        "node_types": [s.node_type.name for s in specs],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "job_submit_env": "export RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265",
    }
    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text(json.dumps(state, indent=2))
    return state


def enable_client_token_auth() -> None:
    """Make this process a token-auth Ray client when a token exists and no mode is set.

    ``ray.init(address="auto")`` does this by itself; an explicit address does not.
    """
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def connect() -> None:
    """Connect to the running cluster unless connected: the job's under ``ray job submit``, else the local one."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "")
    # A dashboard URL (what `ray job submit` takes) is not a driver address: find the cluster.
    ray.init(address=address if address and not address.startswith("http") else "auto",
             logging_level="WARNING")


def running_state() -> dict[str, Any] | None:
    """What :func:`up` recorded about the running local cluster, or None."""
    try:
        return json.loads(state_file().read_text())
    except FileNotFoundError:
        return None


def down() -> bool:
    """Stop the persistent local cluster (only its processes); False if none was recorded."""
    state = running_state()
    if state is None:
        return False
    _stop_marked(state["id"])
    shutil.rmtree(ingress_dir(state["id"], 0).parent, ignore_errors=True)
    state_file().unlink(missing_ok=True)
    return True


def cluster_processes(cluster_id: str) -> list[Any]:
    """The ``psutil.Process`` es of the local cluster ``cluster_id`` (they carry its marker)."""
    import psutil

    procs = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(_MARKER_ENV) == cluster_id:
                procs.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return procs


def _stop_marked(cluster_id: str, grace_s: float = 10.0) -> None:
    import psutil

    procs = cluster_processes(cluster_id)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _node_ip() -> str:
    import ray.util

    return ray.util.get_node_ip_address()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _run_ray_start(cmd: list[str], cluster_id: str, ingress_dir: Path) -> None:
    # One node at a time: concurrent `ray start`s overload the GCS on a 2-core machine.
    # Every node of this machine needs its own dashboard agent port: with Ray's fixed default, the
    # head's agent loses the port to another node or cluster here, and the job server then has
    # no agent to run jobs on ("No available agent to submit job").
    cmd = [_ray_cli(), *cmd[1:], f"--dashboard-agent-listen-port={_free_port()}"]
    result = subprocess.run(cmd, env=_ray_env(cluster_id, ingress_dir), capture_output=True, text=True)
    if result.returncode != 0:
        raise MedrayError(
            f"`{shlex.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr[-2000:]}"
        )


def _wait_for_job_api(cluster_id: str, deadline: float) -> None:
    """Submit a no-op job until the job server accepts it: agents register a while after the nodes."""
    env = {**_ray_env(cluster_id), "RAY_ADDRESS": "http://127.0.0.1:8265"}
    while True:
        result = subprocess.run([_ray_cli(), "job", "submit", "--", "true"], env=env,
                                capture_output=True, text=True)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise MedrayError("the job server did not accept jobs before the start timeout "
                              f"(medray up --timeout):\n{result.stderr[-1000:]}")
        time.sleep(2)


def _wait_for_nodes(address: str, count: int, deadline: float) -> None:
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    alive = 0
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", probe, address], env=_ray_env(),
                             capture_output=True, text=True)
        alive = int(out.stdout.strip() or 0) if out.returncode == 0 else 0
        if alive >= count:
            return
        time.sleep(1)
    raise MedrayError(f"only {alive} of {count} local nodes came up before the start timeout "
                      "(medray up --timeout)")
