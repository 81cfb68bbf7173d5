"""Hybrid parameter-server + AllReduce vs pure DDP on the EMR risk model (issue 18's goals).

The same model (a hashed full-code table of ``--code-rows`` x ``--dim``, a 3-character category
table, a dense tower), the same synthetic patients (:func:`workloads.research.emr_data.synthetic_examples`,
a ``--vocab``-code vocabulary), the same workers, seed and steps, trained by
:func:`workloads.research.emr_train.train` in each mode:

* **hybrid**: tables routed by measured update density (the code table to ``--ps-shards`` parameter
  servers, synchronous; the category table and the tower by DDP AllReduce);
* **hybrid, stale** (``--staleness S``, S > 0): the same, asynchronous with a staleness bound of S;
* **ddp**: everything all-reduced (the tables as dense ``EmbeddingBag`` gradients).

Per mode: bytes moved per step and worker (parameter-server payload: ids and rows both ways; AllReduce:
the gradient bytes DDP hands to the all-reduce, counted by a communication hook), samples/s of the
training loop (rank 0, setup excluded) and held-out AUC. Then the goals as ratios: embedding bytes
of the hybrid / all-reducing the full tables (<= 10 %), samples/s hybrid / ddp (>= 1.5), AUC
difference (<= 0.01).

    python benchmarks/emr_hybrid.py --staleness 2     # CPU, local cluster: 7 min on the shared 2-core machine (load 30)
    python benchmarks/emr_hybrid.py --gpus 2          # towers on 2 GPU workers (NCCL), a running cluster
    python benchmarks/emr_hybrid.py --json out.json

Connects to a running cluster when ``RAY_ADDRESS`` is set, else starts the local one of cluster.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / "platform", REPO):  # medray and workloads without an install
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from medray.cli.table import format_table  # noqa: E402
from workloads.research.emr_config import EmrTrainConfig  # noqa: E402
from workloads.research.emr_train import train  # noqa: E402


def _run(label: str, cfg: EmrTrainConfig) -> dict[str, Any]:
    result = train(cfg)
    m = result.metrics
    print(f"{label}: {result.routing.describe()}", flush=True)
    return {"mode": label, "samples_per_s": m["samples_per_s"], "val_auc": m["val_auc"],
            "ps_bytes_per_step": m["ps_bytes_per_step"], "allreduce_bytes_per_step": m["allreduce_bytes_per_step"],
            "bytes_per_step": m["ps_bytes_per_step"] + m["allreduce_bytes_per_step"], "steps": m["steps"],
            "routes": result.routing.routes, "densities": result.routing.densities}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=20_000)
    p.add_argument("--vocab", type=int, default=100_000)
    p.add_argument("--code-rows", type=int, default=131_072)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpus", type=int, default=0, help="GPU workers (one GPU each, NCCL); overrides --workers")
    p.add_argument("--ps-shards", type=int, default=2)
    p.add_argument("--staleness", type=int, default=0, help="> 0: also run the hybrid with this staleness bound")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)

    workers = args.gpus or args.workers
    base = dict(synthetic_patients=args.patients, vocab=args.vocab, code_rows=args.code_rows, dim=args.dim,
                batch_size=args.batch_size, epochs=args.epochs, max_steps=args.max_steps, workers=workers,
                gpus_per_worker=1.0 if args.gpus else 0.0, ps_shards=args.ps_shards, ps_cpus=0.5,
                checkpoint_every=10_000, max_failures=0)
    runs = [("hybrid", {}), *([(f"hybrid, staleness {args.staleness}", {"staleness": args.staleness})]
                              if args.staleness else []), ("ddp", {"mode": "ddp"})]
    rows = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        if not os.environ.get("RAY_ADDRESS"):
            from medray.cluster.local import local_cluster

            stack.enter_context(local_cluster(REPO / "cluster.yaml", log_to_driver=False))
        for label, changes in runs:
            rows.append(_run(label, EmrTrainConfig(**base, **changes, storage_path=tmp)))
    hybrid, ddp = rows[0], rows[-1]
    table_bytes = args.code_rows * args.dim * 4
    print(f"\n{args.patients} patients, vocab {args.vocab}, code table {args.code_rows} x {args.dim} "
          f"({table_bytes / 1e6:.1f} MB), {workers} {'GPU' if args.gpus else 'CPU'} workers, batch {args.batch_size}, "
          f"{hybrid['steps']} steps")
    print(format_table(("mode", "PS MB/step", "AllReduce MB/step", "total MB/step", "samples/s", "AUC"),
                       [(r["mode"], f"{r['ps_bytes_per_step'] / 1e6:.2f}", f"{r['allreduce_bytes_per_step'] / 1e6:.2f}",
                         f"{r['bytes_per_step'] / 1e6:.2f}", f"{r['samples_per_s']:.0f}", f"{r['val_auc']:.3f}")
                        for r in rows], align="<>>>>>"))
    # The embeddings' share: the hybrid's PS payload vs the code table's gradient all-reduced whole.
    ratios = [("code-table bytes/step, hybrid / all-reduce", hybrid["ps_bytes_per_step"] / table_bytes, "<= 0.10"),
              ("total bytes/step, hybrid / ddp", hybrid["bytes_per_step"] / ddp["bytes_per_step"], "-"),
              ("samples/s, hybrid / ddp", hybrid["samples_per_s"] / ddp["samples_per_s"], ">= 1.5"),
              ("AUC, hybrid - ddp", hybrid["val_auc"] - ddp["val_auc"], "within 0.01")]
    print(format_table(("ratio", "value", "goal"), [(n, f"{v:.3f}", g) for n, v, g in ratios], align="<><"))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratios": {n: v for n, v, _ in ratios}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
