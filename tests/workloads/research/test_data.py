"""workloads.research.data: labels from the EMR, the patient split, and the Ray Datasets built from shards."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from medray.data.shards import VOLUME
from medray.errors import ConfigError
from medray.imaging.normalize import InputSpec
from medray.privacy.pseudonym import pseudonym
from tests.workloads.research.conftest import KEY, SMALL_PATIENTS
from workloads.research.data import LABEL, build_datasets, load_cohort, read_positive_patients, split_patients


def _true_positives(small_data):
    gt = pq.read_table(small_data.data.parent / "cohort" / "ground_truth.parquet", columns=["mrn", "has_nodule"])
    return {pseudonym(KEY, m, kind="patient") for m, y in zip(gt["mrn"].to_pylist(), gt["has_nodule"].to_pylist()) if y}


def test_labels_from_diagnoses_match_the_images(small_data, tmp_path):
    positives = read_positive_patients(small_data.labels)
    assert positives == _true_positives(small_data) and len(positives) == SMALL_PATIENTS // 2
    # The same table as CSV, with padding around the code, gives the same labels.
    table = pq.read_table(small_data.labels)
    codes = pa.array([f" {c} " for c in table["icd10_code"].to_pylist()])
    pa_csv.write_csv(table.set_column(1, "icd10_code", codes), tmp_path / "diagnoses.csv")
    assert read_positive_patients(tmp_path / "diagnoses.csv") == positives
    assert read_positive_patients(small_data.labels, code="I10") != positives


def test_unusable_labels_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="diagnoses.parquet"):
        read_positive_patients(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"mrn": ["x"], "icd10_code": ["R91.1"]}), tmp_path / "raw.parquet")
    with pytest.raises(ConfigError, match="patient_pseudonym"):
        read_positive_patients(tmp_path / "raw.parquet")


def test_split_is_by_patient_stratified_and_deterministic():
    patients = [f"p{i:03d}" for i in range(50)] * 2  # two series per patient
    positives = frozenset(f"p{i:03d}" for i in range(0, 50, 3))  # 17 positives
    train, val = split_patients(patients, positives, val_fraction=0.2, seed=7)
    assert train.isdisjoint(val) and train | val == set(patients)
    assert len(val & positives) == round(0.2 * 17) and len(val - positives) == round(0.2 * 33)
    assert (train, val) == split_patients(reversed(patients), positives, val_fraction=0.2, seed=7)
    assert split_patients(patients, positives, val_fraction=0.2, seed=8)[1] != val
    # A class of two keeps one patient on each side, so the held-out AUC is defined.
    _, tiny_val = split_patients(["a", "b", "c", "d"], frozenset({"a", "b"}), val_fraction=0.1, seed=0)
    assert len(tiny_val & {"a", "b"}) == 1 and len(tiny_val - {"a", "b"}) == 1
    with pytest.raises(ConfigError, match="val_fraction"):
        split_patients(patients, positives, val_fraction=1.0, seed=0)


def test_cohort_reads_spec_and_counts(small_data, tmp_path):
    cohort = load_cohort(small_data.data, small_data.labels, val_fraction=0.25, seed=3)
    assert cohort.spec == InputSpec() and cohort.series == SMALL_PATIENTS
    counts = cohort.counts()
    assert counts["train_patients"] + counts["val_patients"] == SMALL_PATIENTS
    assert counts["val_positive"] == 3 and counts["train_positive"] == 9
    with pytest.raises(ConfigError, match="preprocess.dicom"):
        load_cohort(tmp_path, small_data.labels)


def test_datasets_hold_labelled_volumes_of_their_split_only(ray_cluster, small_data):
    cohort = load_cohort(small_data.data, small_data.labels, val_fraction=0.25, seed=3)
    datasets = build_datasets(cohort, cache=False)
    for name, patients in (("train", cohort.train_patients), ("val", cohort.val_patients)):
        rows = datasets[name].take_all()
        assert len(rows) == len(patients)
        assert set(rows[0]) == {VOLUME, LABEL}  # pseudonyms never reach the training loop
        assert rows[0][VOLUME].shape == cohort.spec.shape and rows[0][VOLUME].dtype == np.float32
        assert sum(r[LABEL] for r in rows) == len(patients & cohort.positives)
