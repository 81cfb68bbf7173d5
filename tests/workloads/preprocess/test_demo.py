"""The demo's preprocessing stage on a tiny cohort: where it writes, what it returns, its figures."""

from __future__ import annotations

import json
import stat

from PIL import Image

from medray.data.cohort import generate_cohort
from medray.data.shards import shard_files
from medray.demo.runner import DemoContext
from tests.workloads.preprocess.helpers import canaries
from workloads.preprocess.demo import stage


def test_stage_writes_prep_and_emr_and_summarises(tmp_path, node_types, ray_cluster):
    ctx = DemoContext(out=tmp_path, node_types=node_types, patients=2)
    generate_cohort(ctx.cohort, patients=2, rows=32, slices=4, nodule_fraction=0.0)
    said: list[str] = []
    ctx.say = said.append  # type: ignore[method-assign]
    result = stage(ctx)
    assert result["series"] == 2 and result["slices"] == 8 and result["quarantined"] == 0
    assert result["emr_rows"] > 0 and result["seconds"] > 0
    assert result["emr_profile"] == "longitudinal"  # joins the images: named for what it is, not Safe Harbor
    json.dumps(result)  # the demo writes it to summary.json
    assert len(shard_files(tmp_path / "prep")) == 2
    assert (tmp_path / "prep/emr/patients.parquet").exists()
    assert stat.S_IMODE((tmp_path / "deid.key").stat().st_mode) == 0o600
    assert any("series written" in s for s in said)
    # Its figures: the shards' slices (one panel per series), the counts, the HU histogram; no PHI
    # in their names, captions or bytes (titles are in the PNG's text metadata).
    figures = {f["path"]: f["caption"] for f in result["figures"]}
    assert sorted(figures) == ["figures/preprocess-counts.png", "figures/preprocess-hu.png",
                               "figures/preprocess-slices.png"]
    phi = canaries(ctx.cohort)
    for path, caption in figures.items():
        data = (tmp_path / path).read_bytes()
        assert Image.open(tmp_path / path).size[0] > 100 and len(data) > 1000
        leaked = [c for c in phi if c in data.decode("latin-1") or c in caption or c in path]
        assert not leaked, f"PHI in {path}: {leaked}"
    assert Image.open(tmp_path / "figures/preprocess-slices.png").size[0] == 2 * 140  # one panel per series
