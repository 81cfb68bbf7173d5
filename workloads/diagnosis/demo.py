"""The demo's diagnosis stage: deploy the service, diagnose held-out studies and a real CT, tear down.

It uses the newest ``nodule`` model that the research stage registered in ``ctx.registry``, the
demo's de-identification key (``ctx.out/deid.key``, shared with preprocessing, so pseudonyms
match) and the training stage's patient split (the file its summary's ``split`` names): it sends
:data:`HELD_OUT` studies of patients the model never trained on, half of them with a nodule, the
last one through the emergency lane, plus pydicom's ``CT_small.dcm``, and counts the right
findings against the cohort's ground truth. Without a training stage in the run (``--only
diagnosis``) it sends the cohort's last studies and says that their split is unknown. It writes its tokens and audit log under ``ctx.out/diagnosis/`` and two figures under
``ctx.out/figures/``: the studies it sent with the model's findings (``diagnosis-findings.png``) and
where each request's time went (``diagnosis-latency.png``). Where Orthanc is installed it also
runs the hospital round trip once (:mod:`workloads.diagnosis.round_trip`, docs/pacs.md): the first
study by C-STORE through the DICOM gateway, its SR found in a private Orthanc.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from medray.broker.lanes import lane_url
from medray.data.shards import window_name
from medray.demo import figures
from medray.demo.report import FIGURES_DIR, figure_entry
from medray.demo.runner import DemoContext
from medray.dicom.multipart import DICOM, encode_series
from medray.dicom.volume import DEFAULT_MAX_PIXELS
from medray.errors import MedrayError, RegistryError
from medray.imaging.normalize import InputSpec
from medray.models.findings import finding_spec
from medray.models.registry import resolve
from medray.privacy.pseudonym import ensure_key_file, load_key, pseudonym
from medray.security.audit import verify_chain
from medray.security.tokens import add_client
from workloads.diagnosis.local import run_local, stop_local
from workloads.diagnosis.pipeline import prepare

__all__ = ["HELD_OUT", "stage"]

HELD_OUT = 6  # held-out patients' studies sent (half with a nodule where the split has enough)


@dataclass(frozen=True)
class _Request:
    name: str  # the cohort's folder name (an index) or pydicom's file name: never PHI
    truth: bool | None  # nodule in the ground truth; None where unknown
    lane: str
    instances: list[bytes] = field(repr=False)
    patient: str | None = None  # the patient's pseudonym (as in the shards and the split)
    split: str = "-"  # "held-out", or "unknown" when no training split is known


@dataclass(frozen=True)
class _Answer:
    request: _Request
    result: dict[str, Any]  # the service's JSON answer: pseudonyms only
    latency_ms: float  # as the client saw it


def _held_out_patients(ctx: DemoContext) -> frozenset[str] | None:
    """The held-out pseudonyms of this run's training stage (its summary's ``split``), or None."""
    for result in ctx.results.values():
        if "split" in result:
            return frozenset(json.loads(Path(result["split"]).read_text())["held_out"])
    return None


def _held_out(cohort: Path, key: bytes, held_out: frozenset[str] | None, n: int) -> list[_Request]:
    import pyarrow.parquet as pq

    truth = pq.read_table(cohort / "ground_truth.parquet", columns=["mrn", "series_dir", "has_nodule"]).to_pylist()
    rows = sorted(truth, key=lambda r: r["series_dir"])
    for row in rows:
        row["patient"] = pseudonym(key, row["mrn"], kind="patient")  # the MRN stays here
    if held_out is None:
        chosen, split = rows[-n:], "unknown"
    else:
        rows = [r for r in rows if r["patient"] in held_out]
        with_nodule, without = [r for r in rows if r["has_nodule"]], [r for r in rows if not r["has_nodule"]]
        n_with = min(len(with_nodule), max(n // 2, n - len(without)))
        chosen = sorted(without[:n - n_with] + with_nodule[:n_with], key=lambda r: r["series_dir"])
        split = "held-out"
    studies = []
    for i, row in enumerate(chosen):
        series_dir = cohort / row["series_dir"] if not Path(row["series_dir"]).is_absolute() else Path(row["series_dir"])
        files = sorted(series_dir.glob("*.dcm"))
        # The last one is sent as an emergency, through the reserved lane.
        studies.append(_Request(series_dir.parent.name, bool(row["has_nodule"]),
                                "emergency" if i == len(chosen) - 1 else "routine", [f.read_bytes() for f in files],
                                patient=row["patient"], split=split))
    return studies


def _post(client: httpx.Client, request: _Request) -> _Answer:
    # A series travels as DICOMweb multipart, a single instance as plain application/dicom.
    instances = request.instances
    body, content_type = encode_series(instances) if len(instances) > 1 else (instances[0], DICOM)
    t0 = time.perf_counter()
    # Each lane has its own ingress: emergencies go to /emergency/v1/diagnose (scope emergency).
    r = client.post(lane_url(request.lane, "/v1/diagnose"), content=body, headers={"Content-Type": content_type})
    latency_ms = (time.perf_counter() - t0) * 1e3
    r.raise_for_status()
    return _Answer(request, r.json(), latency_ms)


def _truth(truth: bool | None) -> str:
    return "unknown" if truth is None else "nodule" if truth else "no nodule"


def _findings_figure(ctx: DemoContext, spec: InputSpec, answers: list[_Answer]) -> dict[str, str]:
    # The model's input, normalised here exactly as the service did (same code, same spec); only
    # pixels and the answer's pseudonymous reference reach the figure.
    volumes = [prepare(a.request.instances, spec, max_pixels=DEFAULT_MAX_PIXELS).x for a in answers]
    titles = [f"{a.result['study']['study_ref'][:16]}…\n"
              f"p={a.result['finding']['probability']:.2f} {a.result['finding']['label']}\n"
              f"{a.request.split + ', ' if a.request.patient else ''}truth: {_truth(a.request.truth)}"
              for a in answers]
    path = figures.slice_montage(volumes, titles, ctx.out / FIGURES_DIR / "diagnosis-findings.png",
                                 view="max", columns=len(volumes))
    return figure_entry(ctx.out, path, "The studies sent to the diagnosis service as the model saw them (axial "
                                       f"maximum-intensity projection of the {window_name(spec.window)} window input), each under "
                                       "its pseudonymous study reference, the model's probability and finding, the "
                                       "patient's side of the training split and the ground truth")


def _latency_figure(ctx: DemoContext, answers: list[_Answer]) -> dict[str, str]:
    parts: dict[str, list[float]] = {"read + normalise (+ model load)": [], "batch + infer": [], "lane hand-off": [],
                                     "ingress (auth, parse, route)": [], "HTTP, proxy, audit record": []}
    for a in answers:
        t = a.result["timings_ms"]
        # Each stage of the request's path, from the innermost out; every timing includes the ones inside it.
        inner = [t["read_normalize"], t["batch_and_infer"]]
        steps = [*inner, t["lane"] - sum(inner), t["total"] - t["lane"], a.latency_ms - t["total"]]
        for values, ms in zip(parts.values(), steps):
            values.append(max(0.0, ms))  # the service rounds its timings: a difference may dip below 0
    labels = [f"{a.request.name} ({a.request.lane})" for a in answers]
    path = figures.bars(labels, parts, ctx.out / FIGURES_DIR / "diagnosis-latency.png", xlabel="ms",
                        value_format="{:.0f} ms", size_px=(720, 80 + 30 * len(labels)))
    return figure_entry(ctx.out, path, "Latency of each request as the client saw it, by where it was spent (a "
                                       "lane's first request also loads the model)")


def _pacs(ctx: DemoContext, url: str, token: str, work: Path, request: _Request) -> dict[str, Any]:
    """The hospital round trip with a private Orthanc where it is installed (docs/pacs.md)."""
    from medray.dicom.orthanc import orthanc_missing
    from workloads.diagnosis.round_trip import pacs_round_trip

    if missing := orthanc_missing():
        ctx.say(f"PACS round trip skipped: {missing}")
        return {"skipped": missing}
    token_file = work / "gateway.token"
    token_file.unlink(missing_ok=True)
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    try:
        summary = pacs_round_trip(url, token_file, request.instances, work / "orthanc")
    except MedrayError as e:  # the messages carry no PHI
        ctx.say(f"PACS round trip failed: {e}")
        return {"error": str(e)}
    found = (f"found in Orthanc by QIDO-RS {summary['sr_found_s']} s after the series completed"
             if summary["sr_found"] else "NOT found in Orthanc")
    ctx.say(f"PACS round trip: {request.name} C-STOREd to AE MEDRAY ({summary['instances']} instances), "
            f"finding {summary['finding']}, its SR {found}")
    return summary


def stage(ctx: DemoContext) -> dict[str, Any]:
    """Deploy, diagnose, show findings and latency, verify the audit log, tear down."""
    from pydicom.data import get_testdata_file

    try:
        manifest = resolve(ctx.registry, "nodule:latest").manifest
    except RegistryError:
        ctx.say("no `nodule` model in the registry (the research stage registers one): skipping")
        return {"skipped": "no nodule model registered"}
    model = manifest.ref
    work = ctx.out / "diagnosis"
    work.mkdir(parents=True, exist_ok=True)
    tokens = work / "tokens.json"
    tokens.unlink(missing_ok=True)
    clinic = add_client(tokens, "demo-clinic", ["clinic", "emergency"])
    args = {
        "registry": str(ctx.registry.resolve()),
        "tokens": str(tokens.resolve()),
        "audit_log": str((work / "audit.jsonl").resolve()),
        "key_file": str(ensure_key_file(ctx.out / "deid.key").resolve()),
        # CT_small.dcm states no body part: the demo lets the chest model take any CT.
        "experts": {"CT/CHEST": model, "CT/*": model},
        "lanes": {"routine": {"min_replicas": 1, "max_replicas": 1}, "emergency": {"min_replicas": 1, "max_replicas": 1}},
    }
    held_out = _held_out_patients(ctx)
    if held_out is None:
        ctx.say("no training split in this run (the research stage writes one): the studies below may be "
                "of training patients")
    key = load_key(ensure_key_file(ctx.out / "deid.key"))
    requests = _held_out(ctx.cohort, key, held_out, HELD_OUT)
    requests.append(_Request("pydicom CT_small.dcm", None, "routine",
                             [Path(get_testdata_file("CT_small.dcm")).read_bytes()]))
    start = time.monotonic()
    url = run_local(args)
    ctx.say(f"diagnosis service up in {time.monotonic() - start:.0f} s at {url} (model {model}); API docs at {url}/docs")
    try:
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {clinic}"}) as client:
            answers = [_post(client, request) for request in requests]
        pacs = _pacs(ctx, url, clinic, work, requests[0])
    finally:
        stop_local()
    findings, lines = [], []
    for a in answers:
        finding, truth = a.result["finding"], a.request.truth
        right = None if truth is None else (finding["label"] == finding_spec(finding["name"]).positive) == truth
        findings.append({"study": a.request.name, "lane": a.request.lane, "patient": a.request.patient or "-",
                         "split": a.request.split, "truth": _truth(truth), "finding": finding["label"],
                         "p": round(finding["probability"], 3), "right": "-" if right is None else right,
                         "ms": round(a.latency_ms, 1)})
        who = f"{a.request.split} patient {a.request.patient[:10]}…" if a.request.patient else "external CT"
        verdict = "" if right is None else " (right)" if right else " (WRONG)"
        lines.append(f"{a.request.name:20} {a.request.lane:9} {who}, truth: {_truth(truth)}, finding: "
                     f"{finding['label']} p={finding['probability']:.2f}{verdict}  "
                     f"study {a.result['study']['study_ref'][:14]}… {a.latency_ms:6.0f} ms")
    scored = [f for f in findings if f["right"] != "-"]
    correct = sum(f["right"] is True for f in scored)
    ctx.say("\n".join(lines))
    ctx.say(f"right findings: {correct} of {len(scored)} studies of "
            f"{'held-out patients' if held_out is not None else 'patients of unknown split'} (model {model})")
    audit = verify_chain(work / "audit.jsonl")
    ctx.say(f"audit log: {audit.entries} entries, chain {'verified' if audit.ok else 'BROKEN'} "
            f"(`medray audit verify {work / 'audit.jsonl'}`)")
    return {"model": model, "studies": len(scored), "held_out": held_out is not None, "correct": correct,
            "requests": len(answers), "pacs": pacs, "audit_entries": audit.entries, "audit_ok": audit.ok, "findings": findings,
            "figures": [_findings_figure(ctx, manifest.spec, answers), _latency_figure(ctx, answers)]}
