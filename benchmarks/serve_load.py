"""Closed-loop HTTP load: the medray diagnosis service against a plain FastAPI + uvicorn server.

Both servers run the same model (a seeded NoduleNet, 16x64x64) and the same request code
(``workloads.diagnosis.pipeline``: medray's DICOM reader and ``normalize_volume``), on this
machine's CPUs, measured back to back at each concurrency (the idle other server stays up). The
baseline is what a team would otherwise build: one
uvicorn process, the model called in FastAPI's thread pool, torch with its default threads, no
auth, no audit. medray runs its full path: its HTTP front door (Serve's HAProxy ingress, the default
of every medray cluster: ``medray.cluster.ingress``), ingress replicas that check the token,
route by the DICOM header, decode, normalise, batch dynamically, pseudonymise and audit.

For each concurrency (1, 8, 32 by default) ``C`` clients each send a request, wait for the answer
and send the next, for ``--seconds`` after a warm-up. Reported: throughput, p50, p99, errors, and
the model's own time (decode + normalise + forward in this process, one torch thread, as in a
replica) so that the service's overhead at concurrency 1 can be read off.

    python benchmarks/serve_load.py                      # ~3 minutes on 2 cores
    python benchmarks/serve_load.py --concurrency 1 8 --seconds 5

Loads only 127.0.0.1; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medray.cli.table import format_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `workloads` when run as a script from anywhere


@dataclass(frozen=True)
class Result:
    server: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        """Successful answers per second."""
        return (self.requests - self.errors) / self.seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _closed_loop(url: str | list[str], body: bytes, headers: dict[str, str], concurrency: int,
                       seconds: float, warmup_s: float) -> tuple[list[float], int, float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

        urls = [url] if isinstance(url, str) else url

        async def client(target: str) -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop_at:
                try:
                    async with session.post(target, data=body, headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append(done - now)
                    errors += not ok

        # Several URLs (replicas serving HTTP themselves): clients spread over them, as a load balancer would.
        await asyncio.gather(*(client(urls[i % len(urls)]) for i in range(concurrency)))
    return latencies, errors, seconds


def run_load(server: str, url: str | list[str], body: bytes, headers: dict[str, str], concurrency: int,
             seconds: float, warmup_s: float) -> Result:
    latencies, errors, elapsed = asyncio.run(_closed_loop(url, body, headers, concurrency, seconds, warmup_s))
    return Result(server, concurrency, len(latencies), errors, elapsed,
                  percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3)


# --- where the CPU goes: every process's CPU time over a point, grouped -------------------------

def _process_group(proc: psutil.Process, names: dict[int, str]) -> str:
    if proc.pid in names:
        return names[proc.pid]
    cmd = proc.cmdline()
    first = cmd[0] if cmd else proc.name()
    if first.startswith("ray::"):
        return first.split()[0]  # the actor or task: ray::ProxyActor, ray::ServeReplica:app:Deployment, ...
    text = " ".join(cmd)
    for marker, group in (("raylet", "raylet"), ("gcs_server", "gcs_server"), ("dashboard/agent.py", "dashboard agent"),
                          ("runtime_env/agent", "runtime-env agent"), ("dashboard/dashboard.py", "dashboard"),
                          ("log_monitor", "log monitor"), ("monitor.py", "autoscaler monitor")):
        if marker in text:
            return group
    return proc.name()


def cpu_snapshot(names: dict[int, str]) -> dict[int, tuple[str, float]]:
    """Every process's (group, user + system CPU seconds); ``names`` labels known pids."""
    out = {}
    for proc in psutil.process_iter():
        try:
            t = proc.cpu_times()
            out[proc.pid] = (_process_group(proc, names), t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def cpu_by_group(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each group spent between two snapshots (processes born in between count whole)."""
    spent: dict[str, float] = {}
    for pid, (group, seconds) in after.items():
        spent[group] = spent.get(group, 0.0) + seconds - before.get(pid, (group, 0.0))[1]
    return {g: s for g, s in sorted(spent.items(), key=lambda kv: -kv[1]) if s > 0}


def measure_point(server: str, url: str | list[str], body: bytes, headers: dict[str, str], concurrency: int,
                  seconds: float, warmup_s: float, names: dict[int, str]) -> tuple[Result, dict[str, float]]:
    """One load point and the machine's CPU per successful answer by process group (ms), warm-up
    included in neither (the snapshot is taken after a separate warm-up of the same length)."""
    run_load(server, url, body, headers, concurrency, warmup_s, 0.0)
    before = cpu_snapshot(names)
    result = run_load(server, url, body, headers, concurrency, seconds, 0.0)
    spent = cpu_by_group(before, cpu_snapshot(names))
    answers = max(1, result.requests - result.errors)
    return result, {g: 1e3 * s / answers for g, s in spent.items()}


# --- the baseline: one uvicorn process, the same pipeline ------------------------------------

def baseline_app(registry: str, ref: str) -> FastAPI:
    """The plain FastAPI app a team would write around the same model and decoding code."""
    from medray.dicom.multipart import split_body
    from workloads.diagnosis.pipeline import load_model, predict, prepare

    model = load_model(registry, ref)
    app = FastAPI()

    def infer(content_type: str | None, body: bytes) -> float:
        study = prepare(split_body(content_type, body), model.spec, max_pixels=4096 * 4096)
        return predict(model, study.x[None])[0]

    @app.post("/v1/diagnose")
    async def diagnose(request: Request) -> JSONResponse:
        body = await request.body()
        # The model call blocks: run it in FastAPI's thread pool, as a sync endpoint would.
        probability = await run_in_threadpool(infer, request.headers.get("content-type"), body)
        return JSONResponse({"probability": probability, "model": ref})

    return app


def _serve_baseline(registry: str, ref: str, port: int) -> None:
    import uvicorn

    uvicorn.run(baseline_app(registry, ref), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _wait_http(url: str, timeout_s: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout_s} s")


# --- setup ----------------------------------------------------------------------------------

def make_fixture(root: Path, request: str) -> tuple[str, str, bytes, str]:
    """A registry with a seeded NoduleNet, and one request body; returns (registry, ref, body, type)."""
    import torch

    from medray.data.cohort import generate_cohort
    from medray.dicom.multipart import encode_series
    from medray.models import DEFAULT_INPUT_SPEC, NoduleNetConfig, build_model
    from medray.models.registry import register

    torch.manual_seed(0)
    torch.save(build_model(NoduleNetConfig()).state_dict(), root / "weights.pt")
    ref = register(root / "registry", "nodule", root / "weights.pt", input_spec=DEFAULT_INPUT_SPEC,
                   model_config=NoduleNetConfig().to_dict()).manifest.ref
    generate_cohort(root / "cohort", patients=1, seed=0)
    files = sorted((root / "cohort" / "dicom" / "study_0000" / "series_01").glob("*.dcm"))
    if request == "series":
        body, content_type = encode_series([f.read_bytes() for f in files])
    else:
        body, content_type = files[len(files) // 2].read_bytes(), "application/dicom"
    return str(root / "registry"), ref, body, content_type


def model_time_ms(registry: str, ref: str, body: bytes, content_type: str, n: int = 200) -> dict[str, float]:
    """p50 of decode + normalise and of the forward pass, in this process with one torch thread."""
    import torch

    from medray.dicom.multipart import split_body
    from workloads.diagnosis.pipeline import load_model, predict, prepare

    torch.set_num_threads(1)
    model = load_model(registry, ref)
    instances = split_body(content_type, body)
    read, infer = [], []
    for i in range(n + 20):
        t0 = time.perf_counter()
        study = prepare(instances, model.spec, max_pixels=4096 * 4096)
        t1 = time.perf_counter()
        predict(model, study.x[None])
        t2 = time.perf_counter()
        if i >= 20:
            read.append(t1 - t0)
            infer.append(t2 - t1)
    read_ms, infer_ms = statistics.median(read) * 1e3, statistics.median(infer) * 1e3
    return {"read_normalize_ms": read_ms, "forward_ms": infer_ms, "model_ms": read_ms + infer_ms}


def medray_args(root: Path, registry: str, replicas: int) -> dict:
    from medray.security.tokens import add_client

    token = add_client(root / "tokens.json", "bench", ["clinic"])
    key = root / "deid.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    args = {
        "registry": registry, "tokens": str(root / "tokens.json"), "audit_log": str(root / "audit.jsonl"),
        "key_file": str(key), "experts": {"CT/CHEST": "nodule:latest"},
        "lanes": {
            # Fixed sizes: autoscaling reacting mid-run would measure the autoscaler, not the path.
            "routine": {"min_replicas": replicas, "max_replicas": replicas, "max_ongoing_requests": 64,
                        "max_queued_requests": -1},
            "emergency": {"min_replicas": 1, "max_replicas": 1},
        },
    }
    return {"args": args, "token": token}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point")
    p.add_argument("--request", choices=["instance", "series"], default="instance",
                   help="one 128x128 CT instance, or a 20-instance series (multipart/related)")
    p.add_argument("--replicas", type=int, default=2, help="ingress replicas (the routine lane) of the medray service")
    p.add_argument("--proxy", default="HeadOnly", choices=["EveryNode", "HeadOnly"],
                   help="where Serve runs its front door (HAProxy, or the Python proxy with --ingress proxy)")
    p.add_argument("--ingress", default="haproxy", choices=["haproxy", "proxy", "direct"],
                   help="haproxy: medray's default, one URL (Serve's HAProxy ingress over direct-ingress replicas); "
                        "proxy: Serve's Python proxy (MEDRAY_INGRESS=proxy); direct: direct ingress without a "
                        "balancer, the clients spread over the replicas' own ports")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--cpu-groups", type=int, default=8, help="process groups shown in the CPU breakdown")
    p.add_argument("--baseline-server", nargs=3, metavar=("REGISTRY", "REF", "PORT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.ingress != "haproxy":  # before the cluster starts: every process of it reads these
        os.environ["MEDRAY_INGRESS"] = "proxy"
    if a.ingress == "direct":
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    if a.baseline_server:
        registry, ref, port = a.baseline_server
        _serve_baseline(registry, ref, int(port))
        return 0

    from workloads.diagnosis.local import free_port

    # Serve logs to its files only (as in production), not to stderr as well.
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    results: list[Result] = []
    cpu_ms: dict[tuple[str, int], dict[str, float]] = {}
    targets: list[str] = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = Path(tmp)
        registry, ref, body, content_type = make_fixture(root, a.request)
        own = model_time_ms(registry, ref, body, content_type)
        print(f"model's own time (1 torch thread): decode+normalise {own['read_normalize_ms']:.2f} ms + "
              f"forward {own['forward_ms']:.2f} ms = {own['model_ms']:.2f} ms", flush=True)

        import ray

        from medray.cluster.local import local_cluster
        from workloads.diagnosis.local import http_targets, run_local, stop_local

        setup = medray_args(root, registry, a.replicas)
        port = free_port()
        baseline = subprocess.Popen([sys.executable, __file__, "--baseline-server", registry, ref, str(port)])
        try:
            with local_cluster(REPO / "cluster.yaml", connect=False) as cluster:
                # Replica logs stay in the cluster's files: forwarding them to this driver would
                # spend the CPUs being measured.
                ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
                url = run_local(setup["args"], proxy_location=a.proxy)
                _wait_http(f"http://127.0.0.1:{port}/docs")
                targets = http_targets(host="127.0.0.1") if a.ingress == "direct" else [url]
                for target in targets:
                    _wait_http(f"{target}/healthz")
                print(f"medray answers on {', '.join(targets)}", flush=True)
                servers = {
                    "fastapi": (f"http://127.0.0.1:{port}/v1/diagnose", {"Content-Type": content_type}),
                    "medray": ([f"{u}/v1/diagnose" for u in targets] if a.ingress == "direct" else
                               f"{url}/v1/diagnose",
                               {"Content-Type": content_type, "Authorization": f"Bearer {setup['token']}"}),
                }
                names = {os.getpid(): "load client (this process)", baseline.pid: "fastapi server"}
                try:
                    # Paired: both servers measured back to back at each point, so that a change
                    # in the machine's load affects both alike.
                    for c in a.concurrency:
                        for server, (target, headers) in servers.items():
                            result, cpu = measure_point(server, target, body, headers, c, a.seconds, a.warmup,
                                                        names)
                            results.append(result)
                            cpu_ms[(server, c)] = cpu
                            print(results[-1], flush=True)
                finally:
                    stop_local()
        finally:
            baseline.terminate()
            baseline.wait(30)

    print_table(results, own, a)
    print_cpu(cpu_ms, a.cpu_groups)
    if a.json:
        Path(a.json).write_text(json.dumps({"model": own, "medray_targets": targets,
                                            "results": [vars(r) for r in results],
                                            "cpu_ms_per_answer": {f"{s} c={c}": v for (s, c), v in cpu_ms.items()}},
                                           indent=2))
    return 0


def print_table(results: list[Result], own: dict[str, float], a: argparse.Namespace) -> None:
    by = {(r.server, r.concurrency): r for r in results}
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nload average at the end (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")
    mode = {"haproxy": f"HAProxy ingress ({a.proxy})", "proxy": f"Python proxy ({a.proxy})",
            "direct": "direct ingress, clients over the replicas' ports"}[a.ingress]
    print(f"request: {a.request}; medray: {a.replicas} routine replicas, {mode}; "
          f"{a.seconds:g} s per point after {a.warmup:g} s warm-up; model's own time {own['model_ms']:.1f} ms\n")
    rows = []
    for c in a.concurrency:
        for server in ("fastapi", "medray"):
            r = by[(server, c)]
            ratio = f"{r.throughput / by[('fastapi', c)].throughput:.2f}x" if server == "medray" else ""
            rows.append((c, server, f"{r.throughput:.1f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", r.errors,
                         ratio))
    headers = ("concurrency", "server", "req/s", "p50 ms", "p99 ms", "errors", "medray/fastapi req/s")
    print(format_table(headers, rows, align="><>>>>>", markdown=True))
    if 1 in a.concurrency:
        over = by[("medray", 1)].p50_ms - own["model_ms"]
        print(f"\nmedray p50 at concurrency 1 exceeds the model's own time by {over:.1f} ms (goal <= 5 ms)")


def print_cpu(cpu_ms: dict[tuple[str, int], dict[str, float]], top: int) -> None:
    """Per point: the machine's CPU ms per successful answer, total and by the busiest process groups."""
    print(f"\nCPU ms per answer, all processes of the machine (top {top} groups; both servers stay up, "
          "so each point includes the idle one's background):")
    for (server, c), groups in cpu_ms.items():
        shown = ", ".join(f"{g} {ms:.2f}" for g, ms in list(groups.items())[:top])
        print(f"  {server:7} c={c:<3} total {sum(groups.values()):6.2f}: {shown}")


if __name__ == "__main__":
    sys.exit(main())
