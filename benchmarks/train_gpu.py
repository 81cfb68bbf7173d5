"""The research training step on whatever GPU is present: precision, GPU utilisation, input pipeline, DDP.

Measured in one run, on synthetic volumes made in-process (16 x 64 x 64, the model's InputSpec):

1. **Precision.** NoduleNet's training step (forward, BCE, backward, AdamW) on batches already on
   the device: fp32 (torch's default, TF32 convolutions on Ampere+), fp32 strict (TF32 off), bf16
   autocast (``medray.precision``), bf16 + ``channels_last_3d``, and with ``--compile`` bf16 +
   ``torch.compile``. Baseline: fp32 in the same run. Each row also gives the GPU utilisation
   sampled with NVML (``medray.gpu``) every 0.1 s while it ran, and peak GPU memory.
2. **Input pipeline** (needs Ray): the training input path of ``workloads.research`` (shards written
   with ``medray.shards``, labelled and split by ``workloads.research.data``, streamed with
   ``iter_torch_batches`` and prefetching onto the device) measured alone, then feeding the fastest
   precision's training step; the same for the resident loader (``--loader resident``: the shard
   pulled once onto the device as float16, permuted slices every epoch; loading time reported
   apart). A loader keeps up when training from it runs at >= 90% of training from memory.
3. **DDP** (with 2+ GPUs): the same step under ``DistributedDataParallel`` (NCCL) on 1 and 2 GPUs,
   per-GPU batch fixed; efficiency = samples/s on 2 / (2 x samples/s on 1).

    python benchmarks/train_gpu.py                  # GPU: about 2-4 minutes; CPU: tiny settings, ~1 minute
    python benchmarks/train_gpu.py --batch-size 256 --width 32 --compile --json out.json

Without a GPU it runs tiny settings on the CPU and prints the same tables with "no GPU".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "platform", REPO):  # medray and workloads without an install (GPU machine)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from medray.gpu import NvmlReader  # noqa: E402
from medray.models import build_model  # noqa: E402
from medray.precision import choose_precision  # noqa: E402

SHAPE = (16, 64, 64)


@dataclass
class Row:
    """One measured configuration."""

    name: str
    samples_per_s: float
    gpu_util_pct: float | None = None  # mean NVML utilisation while it ran
    peak_mem_mib: float | None = None


class UtilSampler:
    """Samples one GPU's utilisation with NVML every ``interval_s`` on a background thread."""

    def __init__(self, index: int | None, interval_s: float = 0.1) -> None:
        self.index, self.interval_s = index, interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        reader = NvmlReader()
        try:
            while not self._stop.is_set():
                readings = reader.read()
                if self.index is not None and self.index < len(readings):
                    self.samples.append(readings[self.index].utilization_pct)
                self._stop.wait(self.interval_s)
        finally:
            reader.close()

    def __enter__(self) -> UtilSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _tf32(enabled: bool):
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _step_fn(model: torch.nn.Module, amp: str, device: torch.device, channels_last: bool, compiled: bool):
    precision = choose_precision(amp, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = precision.grad_scaler()
    forward = torch.compile(model) if compiled else model
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with precision.autocast():
            logits = forward(x.contiguous(memory_format=memory_format))
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _model(width: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({"width": width, "in_shape": list(SHAPE)}).to(device).train()
    return model.to(memory_format=torch.channels_last_3d) if channels_last else model


def _batches(n: int, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(batch, 1, *SHAPE, generator=g).to(device),
             (torch.rand(batch, generator=g) < 0.5).float().to(device)) for _ in range(n)]


def measure_step(name: str, *, amp: str, device: torch.device, width: int, batch: int, steps: int,
                 warmup: int, gpu_index: int | None, channels_last: bool = False, compiled: bool = False,
                 tf32: bool = True) -> Row:
    """Training-step throughput on in-memory batches (no input pipeline)."""
    model = _model(width, device, channels_last)
    step = _step_fn(model, amp, device, channels_last, compiled)
    data = _batches(4, batch, device)
    with _tf32(tf32):
        for i in range(warmup):
            step(*data[i % len(data)])
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with UtilSampler(gpu_index) as util:
            t0 = time.perf_counter()
            for i in range(steps):
                step(*data[i % len(data)])
            _sync(device)
            seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Row(name, steps * batch / seconds, util.mean, peak)


# --- input pipeline (Ray Data, the training workload's own path) --------------------------------

def _write_synthetic_shards(root: Path, volumes: int, shards: int) -> tuple[Path, Path]:
    import pyarrow as pa

    from medray.imaging import InputSpec
    from medray.shards import VOLUMES_DIR, VolumeRecord, build_table, write_parquet, write_shard

    spec = InputSpec()
    rng = np.random.default_rng(0)
    records = [VolumeRecord(
        patient_pseudonym=f"{i:024x}", study_uid=f"2.25.{i + 1}", series_uid=f"2.25.{10**6 + i}",
        modality="CT", body_part="CHEST", study_date=None, n_instances=SHAPE[0], source_shape=SHAPE,
        source_spacing_mm=spec.spacing_mm, spacing_mm=spec.spacing_mm, window="lung",
        volume=rng.random(SHAPE, dtype=np.float32)) for i in range(volumes)]
    data = root / "prep"
    for s in range(shards):
        write_shard(build_table(records[s::shards], spec), data / VOLUMES_DIR / f"part-{s:03d}.parquet")
    labels = data / "emr" / "diagnoses.parquet"
    write_parquet(pa.table({"patient_pseudonym": [r.patient_pseudonym for r in records],
                            "icd10_code": ["R91.1" if i % 2 else "I10" for i in range(volumes)]}), labels)
    return data, labels


def _start_ray(num_gpus: int) -> None:
    import ray
    import ray.data

    from medray.roles import NODE_TYPE_LABEL, ROLE_LABEL, SITE_LABEL, STORAGE_LABEL

    # One node labelled as a training node, so that medray's placement (train and prep roles with
    # fallbacks) finds it; the dashboard is not needed.
    ray.init(address="local", num_gpus=num_gpus, include_dashboard=False, logging_level="ERROR",
             labels={ROLE_LABEL: "train", NODE_TYPE_LABEL: "train-h100", SITE_LABEL: "main",
                     STORAGE_LABEL: "nvme"})
    ray.data.DataContext.get_current().enable_progress_bars = False


def measure_input(*, device: torch.device, width: int, batch: int, volumes: int, amp: str,
                  channels_last: bool, gpu_index: int | None, memory_row: Row) -> list[Row]:
    """Loader alone, and training fed by the loader, on the research workload's input path."""
    from workloads.research.data import LABEL, build_datasets, load_cohort, load_resident

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data, labels = _write_synthetic_shards(Path(tmp), volumes, shards=8)
        cohort = load_cohort(data, labels, val_fraction=0.05, seed=0)
        train = build_datasets(cohort, cache=True)["train"]

        def batches():
            return train.iter_torch_batches(batch_size=batch, dtypes=torch.float32, device=device,
                                            drop_last=True, prefetch_batches=4,
                                            pin_memory=device.type == "cuda",
                                            local_shuffle_buffer_size=4 * batch)

        for _ in batches():  # warm the pipeline once
            pass
        t0 = time.perf_counter()
        resident = load_resident(
            train.iter_torch_batches(batch_size=256, dtypes=torch.float32, device=device, prefetch_batches=2,
                                     pin_memory=device.type == "cuda"),
            device=device, dtype=torch.float16 if device.type == "cuda" else torch.float32)
        _sync(device)
        load_s = time.perf_counter() - t0
        epochs = iter(range(1 << 30))

        def resident_batches():
            return resident.batches(batch, seed=0, epoch=next(epochs))

        for name, source, train_step in (("stream loader alone", batches, False),
                                         ("train from stream loader (same step)", batches, True),
                                         ("resident loader alone", resident_batches, False),
                                         ("train from resident loader (same step)", resident_batches, True)):
            step = None
            if train_step:
                model = _model(width, device, channels_last)
                step = _step_fn(model, amp, device, channels_last, compiled=False)
                for b in source():  # warm-up step
                    step(b["volume"].unsqueeze(1), b[LABEL])
                    break
            _sync(device)
            n = 0
            with UtilSampler(gpu_index) as util:
                t0 = time.perf_counter()
                for b in source():
                    x = b["volume"].unsqueeze(1)
                    if step is not None:
                        step(x, b[LABEL])
                    n += x.shape[0]
                _sync(device)
                seconds = time.perf_counter() - t0
            rows.append(Row(name, n / seconds, util.mean))
    print(f"resident loader: {len(resident)} volumes pulled onto {device} once in {load_s:.2f} s "
          f"({len(resident) / load_s:.0f} volumes/s; not in the rows below)")
    return rows


# --- DDP scaling (torch.distributed, NCCL) -------------------------------------------------------

def _ddp_worker(rank: int, world: int, port: int, args: dict[str, Any], out: Any) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    model = torch.nn.parallel.DistributedDataParallel(_model(args["width"], device, False), device_ids=[rank])
    step = _step_fn(model, args["amp"], device, False, compiled=False)
    data = _batches(4, args["batch"], device)
    for i in range(args["warmup"]):
        step(*data[i % 4])
    torch.cuda.synchronize(device)
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(args["steps"]):
        step(*data[i % 4])
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if rank == 0:
        out.put(world * args["steps"] * args["batch"] / seconds)
    dist.destroy_process_group()


def measure_ddp(world: int, args: dict[str, Any]) -> float:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    port = 29500 + world + os.getpid() % 1000
    mp.spawn(_ddp_worker, args=(world, port, args, out), nprocs=world, join=True)
    return out.get()


# --- report --------------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str, missing: str) -> str:
    return missing if v is None else format(v, spec)


def table(rows: list[Row], baseline: Row, gpu: bool) -> str:
    missing = "no GPU" if not gpu else "-"
    lines = [f"{'configuration':52} {'samples/s':>10} {'x baseline':>10} {'GPU util %':>10} {'peak MiB':>9}"]
    for r in rows:
        lines.append(f"{r.name:52} {r.samples_per_s:>10.1f} {r.samples_per_s / baseline.samples_per_s:>10.2f} "
                     f"{_fmt(r.gpu_util_pct, '.0f', missing):>10} {_fmt(r.peak_mem_mib, '.0f', missing):>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128 if gpu else 8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--steps", type=int, default=60 if gpu else 3)
    p.add_argument("--warmup", type=int, default=15 if gpu else 1)
    p.add_argument("--loader-volumes", type=int, default=4096 if gpu else 64,
                   help="synthetic volumes in the input-pipeline test")
    p.add_argument("--compile", action="store_true", help="also measure bf16 + torch.compile")
    p.add_argument("--no-input", action="store_true", help="skip the Ray Data input pipeline")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    gpu_index = 0 if gpu else None
    name = torch.cuda.get_device_name(0) if gpu else "no GPU"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch_size}, width {args.width}, "
          f"{args.steps} timed steps after {args.warmup} warm-up; volumes {SHAPE}", flush=True)
    common = dict(device=device, width=args.width, batch=args.batch_size, steps=args.steps,
                  warmup=args.warmup, gpu_index=gpu_index)
    rows = [measure_step("fp32" + (" (TF32 convs: torch default)" if gpu else ""), amp="fp32", **common)]
    if gpu:
        rows.append(measure_step("fp32 strict (TF32 off)", amp="fp32", tf32=False, **common))
    rows.append(measure_step("bf16 autocast", amp="bf16", **common))
    rows.append(measure_step("bf16 autocast + channels_last_3d", amp="bf16", channels_last=True, **common))
    if args.compile:
        rows.append(measure_step("bf16 autocast + torch.compile", amp="bf16", compiled=True, **common))
    print("\n== training step, batches already on the device (baseline: fp32) ==")
    print(table(rows, rows[0], gpu), flush=True)
    results: dict[str, Any] = {"device": name, "args": vars(args), "step": [asdict(r) for r in rows]}

    best = max((r for r in rows if r.name.startswith("bf16")), key=lambda r: r.samples_per_s)
    try:
        import ray  # noqa: F401
    except ImportError:
        ray = None
    if args.no_input or ray is None:
        print(f"\n== input pipeline: skipped ({'--no-input' if args.no_input else 'Ray is not installed here'}) ==")
    else:
        _start_ray(torch.cuda.device_count())
        input_rows = measure_input(device=device, width=args.width, batch=args.batch_size,
                                   volumes=args.loader_volumes, amp="bf16",
                                   channels_last="channels_last" in best.name, gpu_index=gpu_index,
                                   memory_row=best)
        print("\n== input pipeline: Ray Data shards -> iter_torch_batches (stream) or one pull onto the device "
              "(resident) (baseline: training from memory) ==")
        print(table([best, *input_rows], best, gpu))
        for alone, fed_row in (input_rows[0:2], input_rows[2:4]):
            fed = fed_row.samples_per_s / best.samples_per_s
            print(f"{fed_row.name} runs at {fed:.0%} of training from memory: the loader "
                  f"{'keeps up' if fed >= 0.9 else 'is the bottleneck'} "
                  f"(alone it delivers {alone.samples_per_s / best.samples_per_s:.1f}x what training needs)")
        results["input"] = [asdict(r) for r in input_rows]

    if gpu and torch.cuda.device_count() >= 2:
        ddp_args = {"width": args.width, "batch": args.batch_size, "steps": args.steps,
                    "warmup": args.warmup, "amp": "bf16"}
        one, two = measure_ddp(1, ddp_args), measure_ddp(2, ddp_args)
        print("\n== DDP, bf16, per-GPU batch fixed (baseline: 1 GPU) ==")
        print(f"{'GPUs':>4} {'samples/s':>10} {'speed-up':>9} {'efficiency':>10}")
        print(f"{1:>4} {one:>10.1f} {1.0:>9.2f} {1.0:>10.0%}")
        print(f"{2:>4} {two:>10.1f} {two / one:>9.2f} {two / (2 * one):>10.0%}")
        results["ddp"] = {"1": one, "2": two, "efficiency": two / (2 * one)}
    else:
        print(f"\n== DDP: skipped ({torch.cuda.device_count() if gpu else 'no'} GPU; needs 2) ==")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
