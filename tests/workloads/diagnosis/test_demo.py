"""The demo's diagnosis stage on the shared cluster: sends only the training split's held-out patients'
studies (one as an emergency), deploys, diagnoses, tears down, draws its figures."""

import json

import pyarrow.parquet as pq
from PIL import Image

from medray.data.cohort import generate_cohort
from medray.demo.runner import DemoContext
from medray.privacy.pseudonym import ensure_key_file, load_key, pseudonym
from tests.workloads.diagnosis.conftest import register_seeded
from tests.workloads.preprocess.helpers import canaries
from workloads.diagnosis.demo import HELD_OUT, _held_out, stage

PATIENTS = HELD_OUT + 6


def _split(ctx: DemoContext) -> tuple[set[str], set[str]]:
    """A training split as the research stage writes it: the first HELD_OUT + 1 patients held out."""
    key = load_key(ensure_key_file(ctx.out / "deid.key"))
    truth = pq.read_table(ctx.cohort / "ground_truth.parquet").sort_by("series_dir").to_pylist()
    patients = [pseudonym(key, r["mrn"], kind="patient") for r in truth]
    held_out, train = set(patients[:HELD_OUT + 1]), set(patients[HELD_OUT + 1:])
    ctx.split_file.write_text(json.dumps({"model": "nodule:1", "held_out": sorted(held_out), "train": sorted(train)}))
    ctx.results["20-train"] = {"split": str(ctx.split_file)}
    return held_out, train


def test_held_out_studies_come_from_the_split_and_mix_both_classes(tmp_path):
    out = tmp_path / "cohort"
    generate_cohort(out, patients=PATIENTS, seed=5, rows=64, slices=10)
    key = load_key(ensure_key_file(tmp_path / "deid.key"))
    truth = pq.read_table(out / "ground_truth.parquet").sort_by("series_dir").to_pylist()
    patients = [pseudonym(key, r["mrn"], kind="patient") for r in truth]
    held_out = frozenset(patients[-HELD_OUT - 2:])
    requests = _held_out(out, key, held_out, HELD_OUT)
    assert len(requests) == HELD_OUT and {r.patient for r in requests} <= held_out
    assert {r.split for r in requests} == {"held-out"} and {r.truth for r in requests} == {True, False}
    assert [r.lane for r in requests] == ["routine"] * (HELD_OUT - 1) + ["emergency"]
    # No split known: the cohort's last studies, said to be of unknown split.
    unknown = _held_out(out, key, None, HELD_OUT)
    assert [r.patient for r in unknown] == patients[-HELD_OUT:] and {r.split for r in unknown} == {"unknown"}


def test_stage_diagnoses_held_out_studies_and_draws_findings_and_latency(ray_cluster, node_types, tmp_path):
    ctx = DemoContext(out=tmp_path, node_types=node_types, patients=PATIENTS)
    generate_cohort(ctx.cohort, patients=PATIENTS, seed=5, rows=64, slices=10)
    held_out, train = _split(ctx)
    ctx.registry.mkdir()
    register_seeded(ctx.registry, seed=1)
    said: list[str] = []
    ctx.say = said.append  # type: ignore[method-assign]
    result = stage(ctx)
    # Where Orthanc is installed, the first study also went through the DICOM gateway (one more audit entry).
    pacs = result["pacs"]
    round_trip = 0 if "skipped" in pacs else 1
    assert result["requests"] == HELD_OUT + 1 and result["audit_ok"]
    assert result["audit_entries"] == HELD_OUT + 1 + round_trip
    if round_trip:
        assert pacs["stored"] and pacs["status"] == 200 and pacs["sr_found"], pacs
        assert any(line.startswith("PACS round trip: ") and "SR found in Orthanc" in line for line in said)
    # Every scored study is of a patient the model never trained on; one went through the emergency lane.
    assert result["held_out"] and result["studies"] == HELD_OUT
    scored = [f for f in result["findings"] if f["split"] != "-"]
    assert len(scored) == HELD_OUT and {f["patient"] for f in scored} <= held_out
    assert not {f["patient"] for f in scored} & train and {f["split"] for f in scored} == {"held-out"}
    assert [f["lane"] for f in scored].count("emergency") == 1
    assert result["correct"] == sum(f["right"] is True for f in scored)
    assert any("held-out patient" in line and "truth: " in line and "finding: " in line for line in said)
    assert any(line.startswith("right findings: ") for line in said)
    figures = {f["path"]: f["caption"] for f in result["figures"]}
    assert sorted(figures) == ["figures/diagnosis-findings.png", "figures/diagnosis-latency.png"]
    findings = Image.open(tmp_path / "figures/diagnosis-findings.png")
    assert findings.size[0] == (HELD_OUT + 1) * 160  # a panel per request, in one row
    # Panel titles: pseudonymous study references and findings, never the study's PHI.
    assert findings.text["Description"].count("2.25.") == HELD_OUT + 1
    assert "nodule_suspected" in findings.text["Description"] or "no_nodule_detected" in findings.text["Description"]
    phi = canaries(ctx.cohort)
    for path, caption in figures.items():
        data = (tmp_path / path).read_bytes().decode("latin-1")
        leaked = [c for c in phi if c in data or c in caption]
        assert not leaked, f"PHI in {path}: {leaked}"
    leaked = [c for c in phi if c in json.dumps(result["findings"]) or any(c in line for line in said)]
    assert not leaked, f"PHI in the findings: {leaked}"
    latency = Image.open(tmp_path / "figures/diagnosis-latency.png")
    assert "emergency" in latency.text["Description"] and "batch + infer" in latency.text["Description"]
