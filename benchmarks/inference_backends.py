"""Per-replica inference speed of each backend of medray.models.backends, against eager torch fp32
measured in the same run.

    python benchmarks/inference_backends.py [--batches 1 8] [--threads 1 2] [--repeats 5] [--calls 20]
        [--no-cuda] [--json FILE]

No Ray: one process plays one replica, calling the backend's predictor as the Engine does (a float32
batch in, probabilities out, host to host). The model is NoduleNet as shipped (width 16, 16 x 64 x 64),
from a throw-away registry, seeded and its head rescaled as in tests/medray/models/test_backends.py
so that the INT8 gate (``check_int8``, 48 held-out synthetic studies) has something to check.

CPU: eager fp32 (``torch.set_num_threads``), onnx (ONNX Runtime fp32) and onnx-int8, for each batch
size and thread count. CUDA (when present): eager fp32 against compile (CUDA graphs, bf16,
``channels_last_3d``), for the shipped model and a clinical-size one (width 32, 64 x 128 x 128).

Each row runs ``--calls`` timed calls after 3 untimed ones; the backends of a row take turns
(``--repeats`` rounds), so that a load change on a shared machine hits them alike. Shown: the median
over rounds of each round's median latency, its spread (min-max over rounds), volumes/s, and the
ratio to eager of the same row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medray.cli.table import format_table  # noqa: E402
from medray.imaging.normalize import InputSpec  # noqa: E402
from medray.models import NoduleNetConfig, build_model  # noqa: E402
from medray.models.backends import check_int8, load_backend  # noqa: E402
from medray.models.registry import register  # noqa: E402
from tests.medray.models.test_backends import register_model, studies  # noqa: E402


def timed(predictor, x: np.ndarray, calls: int) -> float:
    """Median seconds of one call over ``calls`` timed calls (after 3 warm-up calls)."""
    for _ in range(3):
        predictor(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predictor(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compare(predictors: dict[str, object], x: np.ndarray, calls: int, repeats: int) -> dict[str, list[float]]:
    """Round medians (s) per backend, the backends taking turns in each round."""
    rounds: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(repeats):
        for name, predictor in predictors.items():
            rounds[name].append(timed(predictor, x, calls))
    return rounds


def rows_of(setting: str, batch: int, rounds: dict[str, list[float]]) -> list[dict]:
    base = float(np.median(rounds["eager"]))
    out = []
    for name, values in rounds.items():
        median = float(np.median(values))
        out.append({"setting": setting, "batch": batch, "backend": name, "median_ms": median * 1e3,
                    "min_ms": min(values) * 1e3, "max_ms": max(values) * 1e3, "volumes_per_s": batch / median,
                    "vs_eager": base / median})
    return out


def cpu_rows(registry: Path, ref: str, a: argparse.Namespace) -> tuple[list[dict], dict]:
    check = check_int8(registry, ref, *studies(48, seed=11), calibration=studies(16, seed=5)[0])
    rows = []
    for threads in a.threads:
        torch.set_num_threads(threads)
        predictors = {name: load_backend(registry, ref, name, device="cpu", threads=threads)
                      for name in ("eager", "onnx", "onnx-int8")}
        for batch in a.batches:
            x = studies(batch, seed=3)[0]
            rows += rows_of(f"CPU, {threads} thread{'s' * (threads > 1)}", batch,
                            compare(predictors, x, a.calls, a.repeats))
    return rows, {"auc_fp32": check.auc_fp32, "auc_int8": check.auc_int8, "n": check.n,
                  "max_abs_diff": check.max_abs_diff}


def cuda_rows(root: Path, a: argparse.Namespace) -> list[dict]:
    rows = []
    for label, width, shape in (("shipped", 16, (16, 64, 64)), ("clinical", 32, (64, 128, 128))):
        torch.manual_seed(0)
        config = NoduleNetConfig(width=width, in_shape=shape)
        weights = root / f"cuda-{label}.pt"
        torch.save(build_model(config).state_dict(), weights)
        ref = register(root / "registry", f"nodule-{label}", weights, input_spec=InputSpec(shape=shape),
                       model_config=config.to_dict()).manifest.ref
        start = time.perf_counter()
        compiled = load_backend(root / "registry", ref, "compile", device="cuda", max_batch=max(a.batches))
        print(f"compile {label}: {time.perf_counter() - start:.1f} s to compile and capture", flush=True)
        predictors = {"eager": load_backend(root / "registry", ref, "eager", device="cuda"), "compile": compiled}
        for batch in a.batches:
            x = np.random.default_rng(3).random((batch, 1, *shape), dtype=np.float32)
            diff = float(np.abs(predictors["compile"](x) - predictors["eager"](x)).max())
            setting = f"CUDA {label} w{width} {'x'.join(map(str, shape))}"
            for row in rows_of(setting, batch, compare(predictors, x, a.calls, a.repeats)):
                rows.append({**row, "max_abs_diff_vs_eager": diff if row["backend"] != "eager" else 0.0})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU threads per replica")
    p.add_argument("--repeats", type=int, default=5, help="rounds (the backends take turns in each)")
    p.add_argument("--calls", type=int, default=20, help="timed calls per backend and round")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA rows even where a GPU is present")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU rows")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medray-backends-") as tmp:
        root = Path(tmp)
        rows: list[dict] = []
        int8: dict = {}
        if not a.no_cpu:
            ref = register_model(root / "registry", seed=0)
            rows, int8 = cpu_rows(root / "registry", ref, a)
        if torch.cuda.is_available() and not a.no_cuda:
            rows += cuda_rows(root, a)
    headers = ["setting", "batch", "backend", "median ms", "spread ms", "volumes/s", "vs eager"]
    table = [[r["setting"], r["batch"], r["backend"], f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}-{r['max_ms']:.2f}",
              f"{r['volumes_per_s']:.0f}", f"{r['vs_eager']:.2f}x"] for r in rows]
    print(format_table(headers, table, align="<><>>>>", markdown=True))
    if int8:
        print(f"\nINT8 gate: held-out AUC fp32 {int8['auc_fp32']:.4f}, int8 {int8['auc_int8']:.4f} on {int8['n']} "
              f"studies; largest probability difference {int8['max_abs_diff']:.4f}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not a.no_cuda else "cpu"
    print(f"torch {torch.__version__}, device {device}, repeats {a.repeats} x {a.calls} calls")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "int8": int8, "args": vars(a), "device": device,
                                            "torch": torch.__version__}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
