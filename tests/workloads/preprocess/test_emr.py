"""The EMR pipeline on the shared cluster, and its join with the DICOM output by pseudonym."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydicom
import pytest

from medray.errors import ConfigError
from medray.privacy.emr import EmrMapping
from medray.privacy.pseudonym import date_shift_days, key_id, pseudonym
from tests.workloads.preprocess.helpers import PATIENTS
from workloads.preprocess.emr import preprocess_emr
from workloads.preprocess.runs import file_id


@pytest.fixture(scope="module")
def both(clean_run, cohort, key, tmp_path_factory):
    """The shared DICOM run (dates retained) and the EMR pipeline on the same cohort and key."""
    volumes, _, dicom = clean_run
    emr_out = tmp_path_factory.mktemp("prep-emr") / "emr"
    return volumes, emr_out, dicom, preprocess_emr(cohort / "emr", emr_out, key=key)


def test_every_imaged_patient_joins_to_the_emr(both):
    prep, emr_out, dicom, emr = both
    assert dicom.series_written == PATIENTS and not emr.failed
    volumes = pq.read_table(prep / "volumes").drop_columns(["volume"])
    patients = pq.read_table(emr_out / "patients.parquet")
    joined = volumes.select(["patient_pseudonym", "series_uid"]).join(patients, "patient_pseudonym")
    assert joined.num_rows == volumes.num_rows == PATIENTS
    assert set(volumes["patient_pseudonym"].to_pylist()) <= set(patients["patient_pseudonym"].to_pylist())


def test_shifted_study_dates_match_the_shifted_ct_encounters(both, cohort, key):
    """Same offset on both sides: the CT's study date equals its Radiology encounter's admit date."""
    prep, emr_out, _, _ = both
    volumes = pq.read_table(prep / "volumes").drop_columns(["volume"])
    encounters = pq.read_table(emr_out / "encounters.parquet")
    ct_visits = encounters.filter(pc.equal(encounters["department"], "Radiology"))
    visit_day = dict(zip(ct_visits["patient_pseudonym"].to_pylist(), ct_visits["admit_date"].to_pylist()))
    real_day = {}
    for path in sorted((cohort / "dicom").glob("*/series_01/slice_000.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        real = date(int(ds.StudyDate[:4]), int(ds.StudyDate[4:6]), int(ds.StudyDate[6:]))
        real_day[pseudonym(key, ds.PatientID, kind="patient")] = (real, date_shift_days(key, ds.PatientID))
    for row in volumes.to_pylist():
        real, shift = real_day[row["patient_pseudonym"]]
        assert row["study_date"] == real + timedelta(days=shift) == visit_day[row["patient_pseudonym"]]
        assert row["study_date"] != real


def test_emr_outputs_manifest_and_dropped_columns(both, cohort, key):
    _, emr_out, _, emr = both
    assert sorted(p["part"] for p in emr.parts) == ["diagnoses.csv", "encounters.parquet", "labs.csv",
                                                   "notes.parquet", "patients.parquet"]
    assert sorted(p.name for p in emr_out.glob("*.parquet")) == [
        "diagnoses.parquet", "encounters.parquet", "labs.parquet", "notes.parquet", "patients.parquet"]
    encounters = pq.read_table(emr_out / "encounters.parquet")
    assert "mrn" not in encounters.column_names and "attending_physician" not in encounters.column_names
    manifest = json.loads((emr_out / "manifest.json").read_text())
    assert manifest["key_id"] == key_id(key)
    assert manifest["mapping"] == EmrMapping.default().to_dict()
    assert manifest["profile"]["name"] == "longitudinal" and "not Safe Harbor" in manifest["profile"]["rule"]
    rows_in = pq.read_table(cohort / "emr/encounters.parquet").num_rows
    assert manifest["tables"]["encounters.parquet"]["rows_out"] == rows_in


def test_a_broken_table_fails_alone(cohort, key, tmp_path, ray_cluster):
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(pq.read_table(cohort / "emr/patients.parquet"), inp / "patients.parquet")
    pq.write_table(pq.read_table(cohort / "emr/encounters.parquet").drop_columns(["mrn"]),
                   inp / "encounters.parquet")
    (inp / "scratch.csv").write_text("a,b\n1,2\n")
    summary = preprocess_emr(inp, tmp_path / "out", key=key)
    assert list(summary.failed) == ["encounters.parquet"]
    assert "patient_id column 'mrn'" in summary.failed["encounters.parquet"]
    assert summary.skipped == [file_id(key, "scratch.csv")]
    assert (tmp_path / "out/patients.parquet").exists()
    assert not (tmp_path / "out/encounters.parquet").exists()


def test_the_safe_harbor_profile_writes_years_random_codes_and_says_so(cohort, key, tmp_path, ray_cluster):
    crosswalk = tmp_path / "keys" / "crosswalk.json"
    mapping = EmrMapping.default("safe_harbor")
    with pytest.raises(ConfigError, match="--crosswalk"):
        preprocess_emr(cohort / "emr", tmp_path / "no-crosswalk", key=key, mapping=mapping)
    summary = preprocess_emr(cohort / "emr", tmp_path / "out", key=key, mapping=mapping, crosswalk=crosswalk)
    assert not summary.failed
    patients = pq.read_table(tmp_path / "out/patients.parquet")
    labs = pq.read_table(tmp_path / "out/labs.parquet")
    encounters = pq.read_table(tmp_path / "out/encounters.parquet")
    # The same random code for a patient in every table (the driver filled one crosswalk first) ...
    codes = set(patients["patient_pseudonym"].to_pylist())
    assert set(labs["patient_pseudonym"].to_pylist()) <= codes
    assert set(labs["encounter_id"].to_pylist()) <= set(encounters["encounter_id"].to_pylist())
    # ... which is not the keyed pseudonym the longitudinal profile (and DICOM) uses.
    mrns = pq.read_table(cohort / "emr/patients.parquet")["mrn"].to_pylist()
    assert not codes & {pseudonym(key, m, kind="patient") for m in mrns}
    assert {type(v) for v in encounters["admit_date"].to_pylist()} == {int}  # years only
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["mapping"]["profile"] == manifest["profile"]["name"] == "safe_harbor"
    assert "164.514(b)(2)" in manifest["profile"]["rule"]
    # A second run reuses the crosswalk: the codes do not change.
    preprocess_emr(cohort / "emr", tmp_path / "again", key=key, mapping=mapping, crosswalk=crosswalk)
    assert pq.read_table(tmp_path / "again/patients.parquet")["patient_pseudonym"].to_pylist() == \
        patients["patient_pseudonym"].to_pylist()
