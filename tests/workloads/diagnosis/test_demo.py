"""The demo's diagnosis stage on the shared cluster: deploys, diagnoses, tears down, draws its figures."""

from PIL import Image

from medray.data.cohort import generate_cohort
from medray.demo.runner import DemoContext
from tests.workloads.diagnosis.conftest import register_seeded
from tests.workloads.preprocess.helpers import canaries
from workloads.diagnosis.demo import HELD_OUT, stage


def test_stage_diagnoses_held_out_studies_and_draws_findings_and_latency(ray_cluster, node_types, tmp_path):
    ctx = DemoContext(out=tmp_path, node_types=node_types, patients=HELD_OUT)
    generate_cohort(ctx.cohort, patients=HELD_OUT, seed=5, rows=64, slices=10)
    ctx.registry.mkdir()
    register_seeded(ctx.registry, seed=1)
    said: list[str] = []
    ctx.say = said.append  # type: ignore[method-assign]
    result = stage(ctx)
    assert result["requests"] == HELD_OUT + 1 and result["audit_ok"] and result["audit_entries"] == HELD_OUT + 1
    assert any("emergency" in line for line in said)
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
    latency = Image.open(tmp_path / "figures/diagnosis-latency.png")
    assert "emergency" in latency.text["Description"] and "batch + infer" in latency.text["Description"]
