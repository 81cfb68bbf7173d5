"""EMR examples from de-identified diagnoses, and the run's settings (no cluster)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medray.errors import ConfigError
from workloads.research.emr_config import EmrTrainConfig
from workloads.research.emr_data import hash_rows, load_examples
from workloads.research.emr_model import EmrNetConfig, EmrRiskNet


def test_examples_label_the_outcome_and_keep_the_other_codes(tmp_path):
    rows = [("p1", "K37.04"), ("p1", "I50.9"), ("p1", "A01.10"), ("p2", "K37.04"), ("p3", None), (None, "X")]
    pq.write_table(pa.table({"patient_pseudonym": [r[0] for r in rows], "icd10_code": [r[1] for r in rows],
                             "diagnosed_at": [2020] * len(rows)}), tmp_path / "diagnoses.parquet")
    net = EmrNetConfig(code_rows=1_000, category_rows=50)
    ex = load_examples(tmp_path / "diagnoses.parquet", net)
    assert ex.labels.tolist() == [1.0, 0.0]  # p1 has I50.9; p3 has no code and is not a patient here
    assert np.diff(ex.offsets).tolist() == [2, 1]  # the outcome row is a label, not a feature
    assert ex.ids["codes"][0] == ex.ids["codes"][2] == hash_rows(np.array(["K37.04"]), 1_000, salt="code")[0]
    assert ex.ids["categories"][0] == hash_rows(np.array(["K37"]), 50, salt="category")[0]
    logits = EmrRiskNet(net)(ex.take(np.array([1, 0])).bags())
    assert logits.shape == (2,)
    with pytest.raises(ConfigError, match="workloads.preprocess.emr"):
        load_examples(tmp_path / "missing.parquet", net)


def test_settings_are_checked_at_the_boundary():
    with pytest.raises(ConfigError, match="--diagnoses"):
        EmrTrainConfig()
    with pytest.raises(ConfigError, match="multiple of workers"):
        EmrTrainConfig(synthetic_patients=10, batch_size=15, workers=2)
    with pytest.raises(ConfigError, match="GROUP="):
        EmrTrainConfig(synthetic_patients=10, route="codes=gpu")
    assert EmrTrainConfig(synthetic_patients=10, batch_size=4, max_steps=3).total_steps(10) == 3


def test_the_cohort_de_identified_is_training_data(tmp_path):
    """medray synth's EMR through the pipeline's de-identification: the outcome and the codes survive."""
    from datetime import date

    import pyarrow.csv as pa_csv

    from medray.data.cohort import generate_cohort
    from medray.privacy.emr import EmrMapping, deidentify_table

    generate_cohort(tmp_path / "c", patients=40, seed=2, rows=32, slices=2, nodule_fraction=0.0)
    mapping = EmrMapping.default()
    out = deidentify_table(pa_csv.read_csv(tmp_path / "c/emr/diagnoses.csv"), mapping.tables["diagnoses"],
                           b"k" * 32, age_reference_date=date(2024, 1, 1)).table
    pq.write_table(out, tmp_path / "diagnoses.parquet")
    ex = load_examples(tmp_path / "diagnoses.parquet", EmrNetConfig())
    assert len(ex) == 40 and 0 < ex.labels.sum() < 40
    assert (np.diff(ex.offsets) >= 1).all()  # every patient has a history
