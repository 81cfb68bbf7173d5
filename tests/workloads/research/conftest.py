"""Fixtures of the research tests: preprocessed training data in the shard schema, and its labels.

:func:`write_training_data` stands in for the preprocessing workload (same schema, written with
:mod:`medray.data.shards`, same keyed pseudonyms) but skips de-identification of the DICOM headers,
which training never reads, so that a few hundred patients take seconds, not minutes. Swap it
for ``workloads.preprocess`` (``preprocess_dicom`` + ``preprocess_emr``) to test end to end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from medray.data.cohort import generate_cohort
from medray.data.shards import VOLUMES_DIR, VolumeRecord, build_table, window_name, write_parquet, write_shard
from medray.dicom.volume import read_instance, volume_from_datasets
from medray.imaging.normalize import InputSpec
from medray.privacy.pseudonym import pseudo_uid, pseudonym

KEY = b"research-tests-key-0123456789abcdef"
# The held-out AUC test's cohort: big enough that AUC >= 0.9 is reached robustly (docs/research.md).
AUC_PATIENTS = 400
SMALL_PATIENTS = 24


@dataclass(frozen=True)
class TrainingData:
    data: Path  # the shard folder (holds volumes/)
    labels: Path  # the diagnoses table
    patients: int


def write_training_data(out: Path, *, patients: int, seed: int, shards: int = 4,
                        spec: InputSpec = InputSpec()) -> TrainingData:
    """Synthetic cohort -> ``out/prep/volumes/*.parquet`` + ``out/prep/emr/diagnoses.parquet``."""
    cohort = out / "cohort"
    generate_cohort(cohort, patients=patients, seed=seed)
    records = []
    for series_dir in sorted((cohort / "dicom").glob("study_*/series_*")):
        volume = volume_from_datasets([read_instance(p, max_pixels=1 << 24)
                                       for p in sorted(series_dir.glob("*.dcm"))])
        records.append(VolumeRecord(
            patient_pseudonym=pseudonym(KEY, volume.patient_id, kind="patient"),
            study_uid=pseudo_uid(KEY, volume.study_uid),
            series_uid=pseudo_uid(KEY, volume.series_uid),
            modality=volume.modality,
            body_part=volume.body_part,
            study_date=None,
            n_instances=volume.n_instances,
            source_shape=volume.shape,
            source_spacing_mm=volume.spacing_mm,
            spacing_mm=spec.spacing_mm,
            window=window_name(spec.window),
            volume=volume.normalized(spec),
        ))
    prep = out / "prep"
    for i in range(shards):
        write_shard(build_table(records[i::shards], spec), prep / VOLUMES_DIR / f"part-{i:03d}.parquet")
    diagnoses = pa_csv.read_csv(cohort / "emr" / "diagnoses.csv",
                                convert_options=pa_csv.ConvertOptions(column_types={"mrn": pa.string()}))
    labels = prep / "emr" / "diagnoses.parquet"
    write_parquet(pa.table({
        "patient_pseudonym": [pseudonym(KEY, m, kind="patient") for m in diagnoses["mrn"].to_pylist()],
        "icd10_code": diagnoses["icd10_code"],
    }), labels)
    return TrainingData(data=prep, labels=labels, patients=patients)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    """A small cohort for mechanics (DDP, resume, Tune, CLI): 24 patients, half with a nodule."""
    return write_training_data(tmp_path_factory.mktemp("small"), patients=SMALL_PATIENTS, seed=11)


@pytest.fixture(scope="session")
def auc_data(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    """The held-out AUC test's cohort."""
    return write_training_data(tmp_path_factory.mktemp("auc"), patients=AUC_PATIENTS, seed=0)


def ground_truth_positives(data: TrainingData) -> int:
    """Patients with a nodule in the synthetic ground truth (to check the EMR labels against)."""
    table = pq.read_table(data.data.parent / "cohort" / "ground_truth.parquet", columns=["has_nodule"])
    return sum(table["has_nodule"].to_pylist())
