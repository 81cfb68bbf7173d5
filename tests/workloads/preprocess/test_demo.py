"""The demo's preprocessing stage on a tiny cohort: where it writes and what it returns."""

from __future__ import annotations

import json
import stat

from medray.demo import DemoContext
from medray.shards import shard_files
from medray.synth import generate_cohort
from workloads.preprocess.demo import stage


def test_stage_writes_prep_and_emr_and_summarises(tmp_path, node_types, ray_cluster):
    ctx = DemoContext(out=tmp_path, node_types=node_types, patients=2)
    generate_cohort(ctx.cohort, patients=2, rows=32, slices=4, nodule_fraction=0.0)
    said: list[str] = []
    ctx.say = said.append  # type: ignore[method-assign]
    result = stage(ctx)
    assert result["series"] == 2 and result["slices"] == 8 and result["quarantined"] == 0
    assert result["emr_rows"] > 0 and result["seconds"] > 0
    json.dumps(result)  # the demo writes it to summary.json
    assert len(shard_files(tmp_path / "prep")) == 2
    assert (tmp_path / "prep/emr/patients.parquet").exists()
    assert stat.S_IMODE((tmp_path / "deid.key").stat().st_mode) == 0o600
    assert any("series written" in s for s in said)
