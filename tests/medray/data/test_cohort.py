"""The synthetic cohort: CT geometry and HU, EMR links, fake PHI, determinism. No Ray."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from medray.data.cohort import CohortSummary, generate_cohort
from medray.errors import ConfigError

PATIENTS = 10
SEED = 3
LOW_POP_ZIP3 = {"036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830",
                "831", "878", "879", "884", "890", "893"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortSummary:
    """One default-geometry cohort shared by the read-only tests."""
    return generate_cohort(tmp_path_factory.mktemp("cohort"), patients=PATIENTS, seed=SEED)


@pytest.fixture(scope="module")
def ground_truth(cohort: CohortSummary) -> pd.DataFrame:
    return pd.read_parquet(cohort.out_dir / "ground_truth.parquet")


@pytest.fixture(scope="module")
def headers(cohort: CohortSummary) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True)
            for f in sorted((cohort.out_dir / "dicom").rglob("*.dcm"))]


def read_series(series_dir: Path) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(f) for f in series_dir.glob("*.dcm")),
                  key=lambda ds: int(ds.InstanceNumber))


def hu_volume(series: list[pydicom.Dataset]) -> np.ndarray:
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                     for ds in series])


def voxel_index(series: list[pydicom.Dataset], point_mm: tuple[float, float, float]) -> tuple:
    """(slice, row, column) of the voxel nearest a patient-coordinate point."""
    x0, y0, z0 = (float(v) for v in series[0].ImagePositionPatient)
    dr, dc = (float(v) for v in series[0].PixelSpacing)
    dz = float(series[0].SliceThickness)
    x, y, z = point_mm
    return round((z - z0) / dz), round((y - y0) / dr), round((x - x0) / dc)


def sphere_mean(volume: np.ndarray, series: list[pydicom.Dataset],
                center_mm: tuple[float, float, float], radius_mm: float) -> float:
    """Mean HU of the voxels whose centres lie within ``radius_mm`` of ``center_mm``."""
    x0, y0, z0 = (float(v) for v in series[0].ImagePositionPatient)
    spacing = float(series[0].PixelSpacing[0])
    dz = float(series[0].SliceThickness)
    k, r, c = np.indices(volume.shape)
    x, y, z = x0 + c * spacing, y0 + r * spacing, z0 + k * dz
    cx, cy, cz = center_mm
    inside = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius_mm**2
    assert inside.sum() > 0
    return float(volume[inside].mean())


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_summary_counts_match_the_files(cohort: CohortSummary, ground_truth: pd.DataFrame) -> None:
    out = cohort.out_dir
    assert (cohort.patients, cohort.series, cohort.seed) == (PATIENTS, PATIENTS, SEED)
    assert cohort.with_nodule == round(PATIENTS * 0.5) == int(ground_truth.has_nodule.sum())
    assert cohort.dicom_files == len(list(out.rglob("*.dcm"))) == PATIENTS * 20
    series_dirs = sorted(p.relative_to(out).as_posix() for p in out.glob("dicom/study_*/series_*"))
    assert series_dirs == sorted(ground_truth.series_dir)
    assert series_dirs[0] == "dicom/study_0000/series_01"
    assert (out / "dicom/study_0000/series_01/slice_000.dcm").is_file()
    manifest = json.loads((out / "cohort.json").read_text())
    assert manifest["seed"] == SEED
    assert manifest["parameters"]["patients"] == PATIENTS
    assert manifest["counts"]["with_nodule"] == cohort.with_nodule
    assert manifest["counts"]["dicom_files"] == cohort.dicom_files


def test_dicom_geometry_and_encoding(cohort: CohortSummary) -> None:
    series = read_series(cohort.out_dir / "dicom/study_0001/series_01")
    assert len(series) == 20
    thickness = float(series[0].SliceThickness)
    assert thickness == float(series[0].SpacingBetweenSlices) == 5.0
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in series])
    np.testing.assert_allclose(np.diff(positions[:, 2]), thickness)
    assert (positions[:, :2] == positions[0, :2]).all()
    assert positions[0, 0] == -128 * 3.0 / 2 and positions[0, 2] == -200.0
    for k, ds in enumerate(series):
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [3.0, 3.0]
        assert float(ds.SliceLocation) == positions[k, 2]
        assert ds.InstanceNumber == k + 1
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (128, 128, 16, 0)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    first = series[0]
    assert (first.Modality, first.BodyPartExamined, first.StudyDescription) == ("CT", "CHEST",
                                                                                "CT CHEST")
    assert (first.RescaleSlope, first.RescaleIntercept, first.RescaleType) == (1, -1024, "HU")
    assert (first.PhotometricInterpretation, first.SamplesPerPixel) == ("MONOCHROME2", 1)
    assert (first.Manufacturer, first.BurnedInAnnotation) == ("medray-synth", "NO")
    assert len({ds.SOPInstanceUID for ds in series}) == 20
    assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID)
                for ds in series}) == 1
    assert all(ds.SOPInstanceUID.is_valid and ds.SeriesInstanceUID.is_valid for ds in series)


def test_hu_of_air_lungs_and_nodule(cohort: CohortSummary, ground_truth: pd.DataFrame) -> None:
    nodule = ground_truth[ground_truth.has_nodule].iloc[0]
    center = (nodule.nodule_center_x_mm, nodule.nodule_center_y_mm, nodule.nodule_center_z_mm)
    series = read_series(cohort.out_dir / nodule.series_dir)
    volume = hu_volume(series)

    assert abs(volume[:, :8, :8].mean() + 1000) < 20  # air in the corner, outside the body
    mid = volume.shape[0] // 2
    for side in (-1, 1):  # the lungs lie either side of the midline
        column = 64 + side * round(0.18 * 128)
        assert abs(volume[mid - 1:mid + 2, 62:66, column - 2:column + 2].mean() + 850) < 40
    assert volume.min() >= -1024 and volume.max() <= 4095 - 1024

    # The planted sphere is solid (~+30 HU) and lies wholly inside the scanned slab.
    assert 6.0 <= nodule.nodule_radius_mm <= 12.0
    assert abs(sphere_mean(volume, series, center, nodule.nodule_radius_mm - 2) - 30) < 15
    assert abs(volume[voxel_index(series, center)] - 30) < 70
    z0, z1 = float(series[0].ImagePositionPatient[2]), float(series[-1].ImagePositionPatient[2])
    assert z0 + nodule.nodule_radius_mm <= center[2] <= z1 - nodule.nodule_radius_mm

    # The same place in patients without a nodule is lung, not a bright blob.
    for _, other in ground_truth[~ground_truth.has_nodule].iterrows():
        other_series = read_series(cohort.out_dir / other.series_dir)
        assert sphere_mean(hu_volume(other_series), other_series, center, 4.0) < -600


def test_ground_truth_columns(ground_truth: pd.DataFrame) -> None:
    assert list(ground_truth.columns) == [
        "mrn", "study_instance_uid", "series_instance_uid", "series_dir", "has_nodule",
        "nodule_center_x_mm", "nodule_center_y_mm", "nodule_center_z_mm", "nodule_radius_mm"]
    assert ground_truth.has_nodule.dtype == bool
    geometry = ground_truth[[c for c in ground_truth.columns if c.startswith("nodule_")]]
    assert geometry[ground_truth.has_nodule].notna().all().all()
    assert geometry[~ground_truth.has_nodule].isna().all().all()


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path: Path) -> None:
    small = dict(patients=5, rows=64, slices=10)
    generate_cohort(tmp_path / "a", seed=7, **small)
    generate_cohort(tmp_path / "b", seed=7, workers=2, **small)  # written by two processes: the same files
    generate_cohort(tmp_path / "c", seed=8, **small)
    a, b, c = (file_digests(tmp_path / name) for name in "abc")
    assert len(a) == 5 * 10 + 7  # slices + 5 EMR files + ground truth + cohort.json
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if name.endswith((".dcm", ".parquet", ".csv")))


def test_regenerating_replaces_a_previous_cohort(tmp_path: Path) -> None:
    generate_cohort(tmp_path, patients=6, rows=64, slices=8, seed=1)
    summary = generate_cohort(tmp_path, patients=2, rows=64, slices=8, seed=1)
    assert len(list(tmp_path.rglob("*.dcm"))) == summary.dicom_files == 16


@pytest.mark.parametrize("kwargs", [
    dict(patients=0), dict(patients=3, nodule_fraction=1.5), dict(patients=3, rows=16),
    dict(patients=3, seed=-1), dict(patients=3, slices=1), dict(patients=3, pixel_spacing_mm=0.0),
    dict(patients=3, workers=0)])
def test_invalid_arguments_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        generate_cohort(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_a_foreign_non_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError):
        generate_cohort(tmp_path, patients=1)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_emr_tables_join_the_images_by_mrn(cohort: CohortSummary, ground_truth: pd.DataFrame,
                                           headers: list[pydicom.Dataset]) -> None:
    emr = cohort.out_dir / "emr"
    patients = pd.read_parquet(emr / "patients.parquet")
    encounters = pd.read_parquet(emr / "encounters.parquet")
    labs = pd.read_csv(emr / "labs.csv", parse_dates=["collected_at"])
    diagnoses = pd.read_csv(emr / "diagnoses.csv")
    assert patients.mrn.is_unique and len(patients) == PATIENTS
    assert patients.mrn.str.fullmatch(r"MRN\d{7}").all()
    assert set(patients.mrn) == {ds.PatientID for ds in headers} == set(ground_truth.mrn)
    assert set(encounters.mrn) == set(patients.mrn)
    assert encounters.encounter_id.is_unique
    assert (encounters.discharge_date >= encounters.admit_date).all()
    for table in (labs, diagnoses):  # every row points at an encounter of the same patient
        joined = table.merge(encounters, on="encounter_id", suffixes=("", "_enc"))
        assert len(joined) == len(table) and (joined.mrn == joined.mrn_enc).all()
    assert patients.zip.str.fullmatch(r"\d{5}").all()
    assert patients.ssn.str.fullmatch(r"\d{3}-\d{2}-\d{4}").all()

    # Each DICOM study carries the EMR identity of its patient.
    by_mrn = patients.set_index("mrn")
    for ds in headers:
        person = by_mrn.loc[ds.PatientID]
        assert str(ds.PatientName).startswith(f"{person.last_name}^{person.first_name}^".upper())
        assert ds.PatientBirthDate == person.birth_date.strftime("%Y%m%d")
        assert ds.PatientSex == person.sex


def test_r91_1_iff_nodule(cohort: CohortSummary, ground_truth: pd.DataFrame) -> None:
    diagnoses = pd.read_csv(cohort.out_dir / "emr/diagnoses.csv")
    coded = set(diagnoses.loc[diagnoses.icd10_code == "R91.1", "mrn"])
    assert coded == set(ground_truth.loc[ground_truth.has_nodule, "mrn"])
    assert set(diagnoses.loc[diagnoses.icd10_code == "R91.1", "description"]) == {
        "Solitary pulmonary nodule"}
    assert set(diagnoses.mrn) == set(ground_truth.mrn)  # everyone has some diagnosis


def test_phi_canaries_are_present(cohort: CohortSummary, headers: list[pydicom.Dataset]) -> None:
    patients = pd.read_parquet(cohort.out_dir / "emr/patients.parquet")
    encounters = pd.read_parquet(cohort.out_dir / "emr/encounters.parquet")
    for ds in headers:
        for keyword in ("PatientAddress", "OtherPatientIDs", "InstitutionName",
                        "InstitutionAddress", "ReferringPhysicianName", "OperatorsName",
                        "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "SeriesDate",
                        "AcquisitionDate", "ContentDate"):
            assert str(ds.data_element(keyword).value), keyword
        block = ds.private_block(0x0011, "MEDRAY SYNTH")
        assert block[0x01].value == ds.PatientID
        assert block[0x02].value == str(ds.PatientName)
    named = encounters.merge(patients, on="mrn")
    assert all(f"{r.first_name} {r.last_name}" in r.note for r in named.itertuples())
    assert set(patients.zip.str[:3]) & LOW_POP_ZIP3


def test_some_patients_are_older_than_89(cohort: CohortSummary,
                                        headers: list[pydicom.Dataset]) -> None:
    ages = {ds.PatientID: int(ds.PatientAge.rstrip("Y")) for ds in headers}
    assert all(ds.PatientAge.endswith("Y") and len(ds.PatientAge) == 4 for ds in headers)
    assert sum(age > 89 for age in ages.values()) == 1  # 10% of 10 patients
    for ds in headers:  # PatientAge agrees with the birth and study dates
        birth, study = ds.PatientBirthDate, ds.StudyDate
        age = int(study[:4]) - int(birth[:4]) - (study[4:] < birth[4:])
        assert ages[ds.PatientID] == age


def test_no_phi_in_file_or_folder_names(cohort: CohortSummary) -> None:
    patients = pd.read_parquet(cohort.out_dir / "emr/patients.parquet")
    phi = {v.lower() for col in ("mrn", "first_name", "last_name", "ssn", "zip", "city")
           for v in patients[col]}
    phi |= {d.strftime("%Y%m%d") for d in patients.birth_date}
    names = {part.lower() for p in cohort.out_dir.rglob("*")
             for part in p.relative_to(cohort.out_dir).parts}
    assert not {(n, v) for n in names for v in phi if v in n}
