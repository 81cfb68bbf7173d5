"""Volume augmentation throughput of ``medray.imaging.augment.VolumeAugmenter`` on each backend present.

Synthetic batches shaped like the research workload's input (float32 ``(N, D, H, W)`` numpy arrays,
as Ray Data hands them over): 16x64x64 volumes at several batch sizes, and larger 64x128x128 ones.
Each backend turns a batch into the model's input ``(N, 1, D, H, W)`` with the same per-sample
draw (flips on z, y, x, intensity scale and shift, clip, normalise):

- ``dali-gpu``: DALI on the CUDA device; the host->device copy of the batch is inside its pipeline,
  so it is timed; the output is a CUDA tensor.
- ``dali-cpu``: DALI's CPU backend, ``--threads`` worker threads.
- ``torch``: the plain-PyTorch path on the CPU (``VolumeAugmenter(backend="torch")``), torch's
  intra-op threads. **The baseline** of the ratio column.
- ``torch-cuda``: the same function, ``augment_torch(..., device="cuda")``: the batch copied to the
  GPU from pageable memory, then the same tensor operations there (no DALI).

Each measurement runs ``--warmup`` calls, then ``--iters`` timed calls on the same batch, the
device synchronised after each call (``torch.cuda.synchronize()``). ``max |diff|`` is the largest
absolute difference between the backend's output and the torch path's output for the same batch
and the same draw (one seeded generator).

    python benchmarks/dali_augment.py                        # GPU machine with DALI: about a minute
    python benchmarks/dali_augment.py --json out.json
    python benchmarks/dali_augment.py --small 16 --large 4 --iters 2   # a quick check on a CPU

Backends that cannot run here (no DALI, no CUDA device) are skipped and named.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "platform", REPO):  # medray without an install (GPU machine)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medray.cli.table import format_table  # noqa: E402
from medray.imaging.augment import AugmentParams, AugmentSpec, VolumeAugmenter, augment_torch, dali_available  # noqa: E402

SMALL, LARGE = (16, 64, 64), (64, 128, 128)
BASELINE = "torch"
SPEC = AugmentSpec(flip_probability=(0.5, 0.5, 0.5), mean=0.4, std=0.3)

Augment = Callable[[np.ndarray, AugmentParams], torch.Tensor]


@dataclass
class Row:
    """One backend on one batch shape."""

    backend: str
    shape: tuple[int, int, int]
    batch: int
    volumes_per_s: float
    max_abs_diff: float
    ratio: float | None = None  # volumes/s against the baseline on the same shape and batch


def backends() -> tuple[list[str], list[str]]:
    """The backends that can run here, and those skipped with the reason."""
    cuda, dali = torch.cuda.is_available(), dali_available()
    wanted = {"dali-gpu": (cuda and dali, "no DALI" if not dali else "no CUDA device"),
              "dali-cpu": (dali, "no DALI"), "torch": (True, ""), "torch-cuda": (cuda, "no CUDA device")}
    return ([name for name, (ok, _) in wanted.items() if ok],
            [f"{name} ({why})" for name, (ok, why) in wanted.items() if not ok])


def augmenter(backend: str, batch: int, threads: int) -> Augment:
    """A callable ``(volumes, params) -> tensor`` for the backend, built (and its pipeline too) once."""
    if backend == "torch-cuda":
        return lambda x, params: augment_torch(x, params, SPEC, device="cuda")
    return VolumeAugmenter(SPEC, batch_size=batch, backend=backend, num_threads=threads)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(backend: str, shape: tuple[int, int, int], batch: int, *, threads: int, warmup: int,
            iters: int, seed: int) -> Row:
    """Volumes/s of one backend on one synthetic batch, and its largest difference to the torch path."""
    rng = np.random.default_rng(seed)
    volumes = rng.random((batch, *shape), dtype=np.float32)
    params = AugmentParams.draw(SPEC, batch, rng)
    run = augmenter(backend, batch, threads)
    diff = float((run(volumes, params).cpu() - augment_torch(volumes, params, SPEC)).abs().max())
    for _ in range(warmup):
        run(volumes, params)
    _sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        run(volumes, params)
        _sync()
    return Row(backend, shape, batch, iters * batch / (time.perf_counter() - t0), diff)


def table(rows: list[Row]) -> str:
    """The summary: one line per backend and batch."""
    header = ("backend", "shape", "batch", "volumes/s", f"x {BASELINE}", "max |diff|")
    return format_table(header, [(r.backend, "x".join(map(str, r.shape)), r.batch, f"{r.volumes_per_s:,.0f}",
                                  f"{r.ratio:.2f}" if r.ratio is not None else "-", f"{r.max_abs_diff:.1e}")
                                 for r in rows], align="<<>>>>", rule=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, nargs="*", default=[64, 256, 512],
                   help=f"batch sizes of {'x'.join(map(str, SMALL))} volumes")
    p.add_argument("--large", type=int, nargs="*", default=[64],
                   help=f"batch sizes of {'x'.join(map(str, LARGE))} volumes")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="DALI worker threads (default: torch's intra-op threads, as the baseline uses)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    present, skipped = backends()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    if dali_available():
        import nvidia.dali

        dali = nvidia.dali.__version__
    else:
        dali = "not installed"
    print(f"device: {device}; torch {torch.__version__} ({torch.get_num_threads()} threads); DALI {dali} "
          f"({args.threads} threads); {args.iters} timed calls after {args.warmup} warm-up; "
          f"baseline: {BASELINE}", flush=True)
    if skipped:
        print(f"skipped: {', '.join(skipped)}", flush=True)
    rows = []
    for shape, batches in ((SMALL, args.small), (LARGE, args.large)):
        for batch in batches:
            measured = [measure(b, shape, batch, threads=args.threads, warmup=args.warmup, iters=args.iters,
                                seed=args.seed) for b in present]
            base = next(r for r in measured if r.backend == BASELINE)
            for r in measured:
                r.ratio = r.volumes_per_s / base.volumes_per_s
                print(f"  {r.backend:10} {'x'.join(map(str, shape)):10} batch {batch:4}: "
                      f"{r.volumes_per_s:10,.0f} volumes/s, max |diff| {r.max_abs_diff:.1e}", flush=True)
            rows += measured
    print(f"\n== augmentation throughput (baseline: {BASELINE} on the CPU, same run) ==")
    print(table(rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"device": device, "torch": torch.__version__, "dali": dali, "args": vars(args),
             "skipped": skipped, "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
