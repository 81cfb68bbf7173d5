"""The synthetic cohort's EMR: patients, encounters (the CT visit and earlier ones), labs and
diagnoses, linked by MRN and encounter ID, with fake PHI in names, addresses and free-text notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from medray.data.notes import write_notes
from medray.data.people import PHYSICIANS, Patient

__all__ = ["EmrTables", "draw_emr", "write_emr"]

_DEPARTMENTS = ("Internal Medicine", "Pulmonology", "Emergency", "Cardiology")
_VISIT_REASONS = ("shortness of breath", "chronic cough", "chest pain", "routine follow-up",
                  "fatigue", "hypertension management")
_CT_INDICATIONS = ("persistent cough", "abnormal chest radiograph", "smoking history",
                   "dyspnoea on exertion")
# (LOINC, name, unit, mean, sd)
_LABS = (("2160-0", "Creatinine", "mg/dL", 1.0, 0.25), ("718-7", "Hemoglobin", "g/dL", 13.5, 1.5),
         ("2345-7", "Glucose", "mg/dL", 105.0, 25.0), ("6690-2", "WBC", "10*3/uL", 7.5, 2.0),
         ("4548-4", "Hemoglobin A1c", "%", 5.9, 0.8), ("2951-2", "Sodium", "mmol/L", 139.0, 3.0))
_NODULE_DX = ("R91.1", "Solitary pulmonary nodule")
_OTHER_DX = (("I10", "Essential (primary) hypertension"),
             ("E11.9", "Type 2 diabetes mellitus without complications"),
             ("J44.9", "Chronic obstructive pulmonary disease, unspecified"),
             ("E78.5", "Hyperlipidemia, unspecified"),
             ("J45.909", "Unspecified asthma, uncomplicated"),
             ("R05.9", "Cough, unspecified"))

_PATIENT_SCHEMA = pa.schema([
    ("mrn", pa.string()), ("first_name", pa.string()), ("last_name", pa.string()),
    ("birth_date", pa.date32()), ("sex", pa.string()), ("street_address", pa.string()),
    ("city", pa.string()), ("state", pa.string()), ("zip", pa.string()), ("phone", pa.string()),
    ("email", pa.string()), ("ssn", pa.string()), ("insurance_plan_id", pa.string()),
    ("account_number", pa.string())])
_ENCOUNTER_SCHEMA = pa.schema([
    ("encounter_id", pa.string()), ("mrn", pa.string()), ("admit_date", pa.date32()),
    ("discharge_date", pa.date32()), ("department", pa.string()),
    ("attending_physician", pa.string()), ("note", pa.string())])
_LAB_SCHEMA = pa.schema([
    ("mrn", pa.string()), ("encounter_id", pa.string()), ("loinc_code", pa.string()),
    ("test_name", pa.string()), ("value", pa.float64()), ("unit", pa.string()),
    ("collected_at", pa.timestamp("s"))])
_DX_SCHEMA = pa.schema([
    ("mrn", pa.string()), ("encounter_id", pa.string()), ("icd10_code", pa.string()),
    ("description", pa.string()), ("diagnosed_at", pa.date32())])


@dataclass(frozen=True)
class EmrTables:
    """The EMR tables drawn for a cohort (the patients table is written from the people)."""

    encounters: pa.Table
    labs: pa.Table
    diagnoses: pa.Table


def draw_emr(rng: np.random.Generator, cohort: list[Patient]) -> EmrTables:
    """Encounters (the CT visit plus 0-2 earlier ones), their labs, and diagnoses."""
    enc: list[dict] = []
    labs: list[dict] = []
    dx: list[dict] = []
    visits_per_patient = rng.integers(1, 4, size=len(cohort))
    ids = rng.choice(90_000_000, size=int(visits_per_patient.sum()), replace=False) + 10_000_000
    next_id = iter(f"ENC{i}" for i in ids)
    for p, n_visits in zip(cohort, visits_per_patient):
        visits = [_ct_encounter(rng, p, next(next_id))]
        visits += [_clinic_encounter(rng, p, next(next_id)) for _ in range(n_visits - 1)]
        visits.sort(key=lambda e: e["admit_date"])
        enc += visits
        for e in visits:
            labs += _draw_labs(rng, p, e)
        dx += _draw_diagnoses(rng, p, visits)
    return EmrTables(encounters=pa.Table.from_pylist(enc, schema=_ENCOUNTER_SCHEMA),
                labs=pa.Table.from_pylist(labs, schema=_LAB_SCHEMA),
                diagnoses=pa.Table.from_pylist(dx, schema=_DX_SCHEMA))


def _note(p: Patient, text: str) -> str:
    """Free text that names the patient, as real notes do (a de-identification canary)."""
    who = "woman" if p.sex == "F" else "man"
    return f"{p.first} {p.last} ({p.mrn}), {p.age}-year-old {who}. {text}"


def _ct_encounter(rng: np.random.Generator, p: Patient, encounter_id: str) -> dict:
    physician = PHYSICIANS[int(rng.integers(len(PHYSICIANS)))]
    indication = rng.choice(_CT_INDICATIONS)
    return {"encounter_id": encounter_id, "mrn": p.mrn, "admit_date": p.study_at.date(),
            "discharge_date": p.study_at.date(), "department": "Radiology",
            "attending_physician": f"Dr. {physician[1]} {physician[0]}",
            "note": _note(p, f"Outpatient CT chest for {indication}, accession {p.accession}.")}


def _clinic_encounter(rng: np.random.Generator, p: Patient, encounter_id: str) -> dict:
    physician = PHYSICIANS[int(rng.integers(len(PHYSICIANS)))]
    admit = p.study_at.date() - timedelta(days=int(rng.integers(30, 730)))
    department = str(rng.choice(_DEPARTMENTS))
    reason = rng.choice(_VISIT_REASONS)
    return {"encounter_id": encounter_id, "mrn": p.mrn, "admit_date": admit,
            "discharge_date": admit + timedelta(days=int(rng.integers(0, 6))),
            "department": department, "attending_physician": f"Dr. {physician[1]} {physician[0]}",
            "note": _note(p, f"Seen in {department} for {reason}. Lives in {p.city}, {p.state}.")}


def _draw_labs(rng: np.random.Generator, p: Patient, encounter: dict) -> list[dict]:
    chosen = rng.choice(len(_LABS), size=int(rng.integers(2, 5)), replace=False)
    day = datetime.combine(encounter["admit_date"], datetime.min.time())
    rows = []
    for i in sorted(chosen):
        loinc, name, unit, mean, sd = _LABS[i]
        rows.append({"mrn": p.mrn, "encounter_id": encounter["encounter_id"], "loinc_code": loinc,
                     "test_name": name, "unit": unit,
                     "value": round(max(0.1, float(rng.normal(mean, sd))), 2),
                     "collected_at": day + timedelta(minutes=int(rng.integers(6 * 60, 20 * 60)))})
    return rows


def _draw_diagnoses(rng: np.random.Generator, p: Patient, visits: list[dict]) -> list[dict]:
    """1-3 chronic codes on random visits; R91.1 on the CT visit iff the patient has a nodule."""
    chosen = rng.choice(len(_OTHER_DX), size=int(rng.integers(1, 4)), replace=False)
    coded = [(_OTHER_DX[i], visits[int(rng.integers(len(visits)))]) for i in sorted(chosen)]
    if p.nodule is not None:
        ct_visit = next(v for v in visits if v["department"] == "Radiology")
        coded.append((_NODULE_DX, ct_visit))
    return [{"mrn": p.mrn, "encounter_id": v["encounter_id"], "icd10_code": code,
             "description": text, "diagnosed_at": v["admit_date"]} for (code, text), v in coded]


def write_emr(emr_dir: Path, cohort: list[Patient], emr: EmrTables) -> None:
    """patients.parquet, encounters.parquet, labs.csv, diagnoses.csv and notes.parquet (clinical notes
    with planted PHI, :mod:`medray.data.notes`) under ``emr_dir``."""
    emr_dir.mkdir()
    people = [{"mrn": p.mrn, "first_name": p.first, "last_name": p.last,
               "birth_date": p.birth_date, "sex": p.sex, "street_address": p.street,
               "city": p.city, "state": p.state, "zip": p.zip, "phone": p.phone,
               "email": p.email, "ssn": p.ssn, "insurance_plan_id": p.insurance_plan_id,
               "account_number": p.account_number} for p in cohort]
    pq.write_table(pa.Table.from_pylist(people, schema=_PATIENT_SCHEMA),
                   emr_dir / "patients.parquet")
    pq.write_table(emr.encounters, emr_dir / "encounters.parquet")
    pa_csv.write_csv(emr.labs, emr_dir / "labs.csv")
    pa_csv.write_csv(emr.diagnoses, emr_dir / "diagnoses.csv")
    write_notes(emr_dir / "notes.parquet", cohort, emr.encounters)
