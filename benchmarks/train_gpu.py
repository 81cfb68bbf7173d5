"""The research training step on whatever GPU is present: precision, GPU utilisation, input pipeline, DDP.

Measured in one run, on synthetic volumes made in-process (16 x 64 x 64, the model's InputSpec):

1. **Precision.** NoduleNet's training step (forward, BCE, backward, AdamW) on batches already on
   the device: fp32 (torch's default, TF32 convolutions on Ampere+), fp32 strict (TF32 off), bf16
   autocast (``medray.models.precision``), bf16 + ``channels_last_3d``, and with ``--compile`` bf16 +
   ``torch.compile``. Baseline: fp32 in the same run. Each row also gives the GPU utilisation
   sampled with NVML (``medray.cluster.nvml``) every 0.1 s while it ran, and peak GPU memory.
2. **Input pipeline** (needs Ray): the training input path of ``workloads.research`` (shards written
   with ``medray.data.shards``, labelled and split by ``workloads.research.data``, streamed with
   ``iter_torch_batches`` and prefetching onto the device) measured alone, then feeding the fastest
   precision's training step; the same for the resident loader (``--loader resident``: the shard
   pulled once onto the device as float16, permuted slices every epoch; loading time reported
   apart). A loader keeps up when training from it runs at >= 90% of training from memory.
3. **DDP** (with 2+ GPUs and Ray): the same step in Ray Train ``TorchTrainer`` workers placed by the
   research workload (``prepare_model``: ``DistributedDataParallel`` over NCCL) on 1 and 2 GPUs,
   per-GPU batch fixed; efficiency = samples/s on 2 / (2 x samples/s on 1).
4. **The research workload** (on a GPU, with Ray): ``workloads.research.train`` itself on the same
   shards, resident loader, bf16 + channels_last, on 1 GPU worker and (with 2+ GPUs) 2: the
   epochs' samples/s and input wait as the training loop reports them.

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

from medray.cli.table import format_table  # noqa: E402
from medray.cluster.nvml import NvmlReader  # noqa: E402
from medray.models import build_model  # noqa: E402
from medray.models.precision import choose_precision  # noqa: E402

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

    from medray.data.shards import VOLUMES_DIR, VolumeRecord, build_table, write_parquet, write_shard
    from medray.imaging.normalize import InputSpec

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

    from medray.cluster.node_types import NODE_TYPE_LABEL, ROLE_LABEL, SITE_LABEL, STORAGE_LABEL

    # One node labelled as a training node, so that medray's placement (train and prep roles with
    # fallbacks) finds it; the dashboard is not needed.
    ray.init(address="local", num_gpus=num_gpus, include_dashboard=False, logging_level="ERROR",
             labels={ROLE_LABEL: "train", NODE_TYPE_LABEL: "train-h100", SITE_LABEL: "main",
                     STORAGE_LABEL: "nvme"})
    ray.data.DataContext.get_current().enable_progress_bars = False


def measure_input(data: Path, labels: Path, *, device: torch.device, width: int, batch: int, amp: str,
                  channels_last: bool, gpu_index: int | None, steps: int, warmup: int) -> list[Row]:
    """Loader alone, and training fed by the loader, on the research workload's input path."""
    from workloads.research.data import LABEL, build_datasets, load_cohort, load_resident

    rows = []
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

    def resident_batches():  # epoch after epoch: as many batches as the timed steps need
        return (b for _ in range(-(-(warmup + steps) // resident.steps(batch)))
                for b in resident.batches(batch, seed=0, epoch=next(epochs)))

    for name, source, train_step in (("stream loader alone", batches, False),
                                     ("train from stream loader (same step)", batches, True),
                                     ("resident loader alone", resident_batches, False),
                                     ("train from resident loader (same step)", resident_batches, True)):
        step = None
        source_batches = source()
        if train_step:
            model = _model(width, device, channels_last)
            step = _step_fn(model, amp, device, channels_last, compiled=False)
            for _, b in zip(range(warmup), source_batches):  # as many warm-up steps as from memory
                step(b["volume"].unsqueeze(1), b[LABEL])
        _sync(device)
        n = 0
        with UtilSampler(gpu_index) as util:
            t0 = time.perf_counter()
            for b in source_batches:
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


# --- the research workload end to end (workloads.research.train) ---------------------------------

def measure_workload(data: Path, labels: Path, *, workers: int, batch: int, width: int, epochs: int) -> dict[str, Any]:
    """``workloads.research.train`` on the shards (resident loader, bf16, channels_last, flips), on
    ``workers`` GPUs with ``batch`` volumes per GPU: the epochs' median samples/s and input wait
    (the first epoch, with its warm-up, left out)."""
    from workloads.research.config import TrainConfig
    from workloads.research.train import train

    with tempfile.TemporaryDirectory() as storage:
        result = train(TrainConfig(
            data=str(data), labels=str(labels), epochs=epochs, workers=workers, gpus_per_worker=1,
            cpus_per_worker=2, batch_size=batch * workers, width=width, amp="bf16", channels_last=True,
            loader="resident", val_fraction=0.05, checkpoint_every=epochs, storage_path=storage))
    later = result.history[1:] or result.history
    out = {"workers": workers, "loader": result.loader,
           "samples_per_s": float(np.median([h["samples_per_s"] for h in later])),
           "input_wait": float(np.median([h["input_wait"] for h in later]))}
    print(f"  research workload, {workers} GPU worker(s), {result.loader} loader: "
          f"{out['samples_per_s']:.0f} samples/s, input wait {out['input_wait']:.1%}", flush=True)
    return out


# --- DDP scaling (Ray Train TorchTrainer, NCCL) --------------------------------------------------

def _ddp_loop(config: dict[str, Any]) -> dict[str, float]:
    """One Train worker: the bf16 step on in-memory batches, wrapped in DDP by Ray Train (world > 1)."""
    import ray.train
    import ray.train.torch

    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(_model(config["width"], device, config["channels_last"]),
                                          parallel_strategy_kwargs=config.get("ddp_kwargs"))
    step = _step_fn(model, config["amp"], device, config["channels_last"], compiled=False)
    data = _batches(4, config["batch"], device)
    for i in range(config["warmup"]):
        step(*data[i % 4])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(config["steps"]):
        step(*data[i % 4])
    _sync(device)
    seconds = time.perf_counter() - t0
    world = ray.train.get_context().get_world_size()
    return {"samples_per_s": world * config["steps"] * config["batch"] / seconds, "world": world,
            "ddp": isinstance(model, torch.nn.parallel.DistributedDataParallel)}


def measure_ddp(world: int, config: dict[str, Any], **ddp_kwargs: Any) -> float:
    """Samples/s of ``world`` Train workers placed by the research workload on ``train`` GPU nodes."""
    from ray.train import RunConfig
    from ray.train.torch import TorchTrainer

    from workloads.research.placement import place_workers

    workers = place_workers(cpus_per_worker=2, gpus_per_worker=1)
    with tempfile.TemporaryDirectory() as storage:
        result = TorchTrainer(_ddp_loop, train_loop_config={**config, "ddp_kwargs": ddp_kwargs or None},
                              scaling_config=workers.scaling_config(world),
                              torch_config=workers.torch_config(),
                              run_config=RunConfig(name=f"ddp{world}", storage_path=storage)).fit()
    out = result.return_value
    assert out["world"] == world and out["ddp"] == (world > 1), out
    print(f"  {world} Train worker(s), backend {workers.backend}, DDP {out['ddp']}: "
          f"{out['samples_per_s']:.0f} samples/s", flush=True)
    return out["samples_per_s"]


# --- report --------------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str, missing: str) -> str:
    return missing if v is None else format(v, spec)


def table(rows: list[Row], baseline: Row, gpu: bool) -> str:
    """One line per configuration: throughput, its ratio to ``baseline``'s, GPU use."""
    missing = "no GPU" if not gpu else "-"
    return format_table(
        ("configuration", "samples/s", "x baseline", "GPU util %", "peak MiB"),
        [(r.name, f"{r.samples_per_s:.1f}", f"{r.samples_per_s / baseline.samples_per_s:.2f}",
          _fmt(r.gpu_util_pct, ".0f", missing), _fmt(r.peak_mem_mib, ".0f", missing)) for r in rows],
        align="<>>>>")


def main(argv: list[str] | None = None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128 if gpu else 8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--steps", type=int, default=60 if gpu else 3)
    p.add_argument("--warmup", type=int, default=15 if gpu else 1)
    p.add_argument("--loader-volumes", type=int, default=4096 if gpu else 64,
                   help="synthetic volumes in the input-pipeline test")
    p.add_argument("--workload-epochs", type=int, default=5, help="epochs of the research workload run (GPU)")
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
        import ray
    except ImportError:
        ray = None
    if args.no_input or ray is None:
        print(f"\n== input pipeline, workload and DDP: skipped "
              f"({'--no-input' if args.no_input else 'Ray is not installed here'}) ==")
    else:
        _start_ray(torch.cuda.device_count())
        with tempfile.TemporaryDirectory() as tmp:
            data, labels = _write_synthetic_shards(Path(tmp), args.loader_volumes, shards=8)
            input_rows = measure_input(data, labels, device=device, width=args.width, batch=args.batch_size,
                                       amp="bf16", channels_last="channels_last" in best.name,
                                       gpu_index=gpu_index, steps=args.steps, warmup=args.warmup)
            print("\n== input pipeline: Ray Data shards -> iter_torch_batches (stream) or one pull onto the "
                  "device (resident) (baseline: training from memory) ==")
            print(table([best, *input_rows], best, gpu))
            for alone, fed_row in (input_rows[0:2], input_rows[2:4]):
                fed = fed_row.samples_per_s / best.samples_per_s
                print(f"{fed_row.name} runs at {fed:.0%} of training from memory: the loader "
                      f"{'keeps up' if fed >= 0.9 else 'is the bottleneck'} "
                      f"(alone it delivers {alone.samples_per_s / best.samples_per_s:.1f}x what training needs)")
            results["input"] = [asdict(r) for r in input_rows]
            if gpu:
                worlds = [1, 2] if torch.cuda.device_count() >= 2 else [1]
                runs = [measure_workload(data, labels, workers=w, batch=args.batch_size, width=args.width,
                                         epochs=args.workload_epochs) for w in worlds]
                print("\n== the research workload (workloads.research.train: resident loader, bf16, "
                      "channels_last, flips) (baseline: training from memory) ==")
                print(format_table(
                    ("GPU workers", "samples/s", "per GPU x baseline", "input wait"),
                    [(r["workers"], f"{r['samples_per_s']:.0f}",
                      f"{r['samples_per_s'] / r['workers'] / best.samples_per_s:.2f}",
                      f"{r['input_wait']:.1%}") for r in runs],
                    align=">>>>"))
                results["workload"] = runs

        if gpu and torch.cuda.device_count() >= 2:
            ddp_args = {"width": args.width, "batch": args.batch_size, "steps": args.steps,
                        "warmup": args.warmup, "amp": "bf16", "channels_last": "channels_last" in best.name}
            one = measure_ddp(1, ddp_args)
            two = {"DDP defaults": measure_ddp(2, ddp_args),
                   "gradient_as_bucket_view": measure_ddp(2, ddp_args, gradient_as_bucket_view=True)}
            print(f"\n== DDP, {best.name}, per-GPU batch fixed (baseline: 1 GPU) ==")
            print(format_table(
                ("GPUs", "DDP options", "samples/s", "speed-up", "efficiency"),
                [(1, "-", f"{one:.1f}", f"{1.0:.2f}", f"{1.0:.0%}"),
                 *((2, options, f"{rate:.1f}", f"{rate / one:.2f}", f"{rate / (2 * one):.0%}")
                   for options, rate in two.items())],
                align=">>>>>"))
            results["ddp"] = {"1": one, "2": two, "efficiency": {k: v / (2 * one) for k, v in two.items()}}
        else:
            print(f"\n== DDP: skipped ({torch.cuda.device_count() if gpu else 'no'} GPU; needs 2) ==")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
