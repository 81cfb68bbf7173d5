"""The demo's diagnosis stage: deploy the service, diagnose held-out studies and a real CT, tear down.

It uses the newest ``nodule`` model that the research stage registered in ``ctx.registry``, the
demo's de-identification key (``ctx.out/deid.key``, shared with preprocessing, so pseudonyms
match), and writes its tokens and audit log under ``ctx.out/diagnosis/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from medray.audit import verify_chain
from medray.auth import add_client
from medray.demo import DemoContext
from medray.errors import RegistryError
from medray.pseudonym import ensure_key_file
from medray.registry import resolve
from workloads.diagnosis.local import run_local, stop_local
from workloads.diagnosis.multipart import encode_series

__all__ = ["HELD_OUT", "stage"]

HELD_OUT = 4  # the cohort's last studies


def _held_out(cohort: Path, n: int) -> list[tuple[str, bool, list[bytes]]]:
    import pyarrow.parquet as pq

    truth = pq.read_table(cohort / "ground_truth.parquet", columns=["series_dir", "has_nodule"]).to_pylist()
    studies = []
    for row in sorted(truth, key=lambda r: r["series_dir"])[-n:]:
        series_dir = cohort / row["series_dir"] if not Path(row["series_dir"]).is_absolute() else Path(row["series_dir"])
        files = sorted(series_dir.glob("*.dcm"))
        # Show the cohort's folder name (an index, never PHI) to identify the study on screen.
        studies.append((series_dir.parent.name, bool(row["has_nodule"]), [f.read_bytes() for f in files]))
    return studies


def stage(ctx: DemoContext) -> dict[str, Any]:
    """Deploy, diagnose, show findings and latency, verify the audit log, tear down."""
    from pydicom.data import get_testdata_file

    try:
        model = resolve(ctx.registry, "nodule:latest").manifest.ref
    except RegistryError:
        ctx.say("no `nodule` model in the registry (the research stage registers one): skipping")
        return {"skipped": "no nodule model registered"}
    work = ctx.out / "diagnosis"
    work.mkdir(parents=True, exist_ok=True)
    tokens = work / "tokens.json"
    tokens.unlink(missing_ok=True)
    clinic = add_client(tokens, "demo-clinic", ["clinic"])
    args = {
        "registry": str(ctx.registry.resolve()),
        "tokens": str(tokens.resolve()),
        "audit_log": str((work / "audit.jsonl").resolve()),
        "key_file": str(ensure_key_file(ctx.out / "deid.key").resolve()),
        # CT_small.dcm states no body part: the demo lets the chest model take any CT.
        "experts": {"CT/CHEST": model, "CT/*": model},
        "lanes": {"routine": {"min_replicas": 1, "max_replicas": 1}, "emergency": {"min_replicas": 1, "max_replicas": 1}},
    }
    start = time.monotonic()
    url = run_local(args)
    ctx.say(f"diagnosis service up in {time.monotonic() - start:.0f} s at {url} (model {model}); API docs at {url}/docs")
    rows, correct = [], 0
    try:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {clinic}"}) as client:
            requests = [(name, truth, "routine", *encode_series(instances))
                        for name, truth, instances in _held_out(ctx.cohort, HELD_OUT)]
            requests[-1] = (*requests[-1][:2], "emergency", *requests[-1][3:])
            ct_small = Path(get_testdata_file("CT_small.dcm")).read_bytes()
            requests.append(("pydicom CT_small.dcm", None, "routine", ct_small, "application/dicom"))
            for name, truth, lane, body, content_type in requests:
                t0 = time.perf_counter()
                r = client.post("/v1/diagnose", content=body, headers={
                    "Content-Type": content_type, "X-Medray-Priority": lane})
                latency_ms = (time.perf_counter() - t0) * 1e3
                r.raise_for_status()
                result = r.json()
                finding = result["finding"]
                if truth is not None:
                    correct += (finding["label"] == "nodule_suspected") == truth
                rows.append(f"{name:22} {lane:9} {str(truth) if truth is not None else '-':6} "
                            f"{finding['probability']:6.3f} {finding['label']:19} {result['model']:10} "
                            f"{result['study']['study_ref'][:18]}… {latency_ms:7.1f}")
    finally:
        stop_local()
    ctx.say(f"{'study':22} {'lane':9} {'truth':6} {'prob':>6} {'finding':19} {'model':10} "
            f"{'pseudonymous study':19} {'ms':>7}\n" + "\n".join(rows))
    audit = verify_chain(work / "audit.jsonl")
    ctx.say(f"audit log: {audit.entries} entries, chain {'verified' if audit.ok else 'BROKEN'} "
            f"(`medray audit verify {work / 'audit.jsonl'}`)")
    return {"model": model, "studies": HELD_OUT, "correct": correct, "requests": len(rows),
            "audit_entries": audit.entries, "audit_ok": audit.ok}
