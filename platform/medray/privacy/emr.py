"""EMR de-identification by column role under a named profile, vectorised with pyarrow compute.

Each column of a table gets a **role** from a small declarative mapping (YAML or JSON, see
:class:`EmrMapping`); nothing is decided per row in Python but the scrubbing of notes. Keyed and random codes are computed
once per distinct value (an MRN, an encounter ID), never per row. The mapping names its
**profile** (:data:`PROFILES`), which decides what the identifying roles become:

========== ======================================= ===========================================
role       ``safe_harbor``                         ``longitudinal``
========== ======================================= ===========================================
patient_id ``patient_pseudonym`` (first column) =  ``patient_pseudonym`` = ``pseudonym(key, mrn,
           a random code from the crosswalk        kind="patient")``, the DICOM PatientID
           (:class:`~medray.privacy.crosswalk.     pseudonym
           Crosswalk`); rows without an MRN are
           dropped
pseudonym  a random crosswalk code of its kind     ``pseudonym(key, value, kind=<column>)``
           (joins across tables survive)
date       the year only (int16)                   shifted by ``date_shift_days(key, mrn)``,
                                                   the DICOM pipeline's offset
birth_date the birth year, null over 89; adds      shifted like a date, null over 89; adds
           ``age`` ("NN" or "90+")                 ``age``
keep       kept as is (the explicit allow-list)    the same
remove     dropped (names, street, city, phone, fax, email, SSN, plan and account numbers,
           licences, vehicle and device IDs, URLs, IPs, biometrics, photos)
name       dropped like ``remove``; its values (person names) join the dictionary the notes are
           scrubbed with (both)
note       scrubbed text (:mod:`medray.privacy.    scrubbed the same, but its dates shifted by
           notes`, Presidio): names, phone/fax,    the patient's offset
           e-mail, SSN, MRN and other numbers,
           URLs, IPs, addresses -> placeholders,
           ages over 89 -> "90+", dates -> year
age        ages as text, those over 89 grouped as "90+" (both profiles)
zip        the first three digits; the 17 ZIP3 areas of fewer than 20,000 people -> "000" (both)
free_text  dropped (both): text that is not worth scrubbing
========== ======================================= ===========================================

``safe_harbor`` implements HIPAA Safe Harbor (45 CFR 164.514(b)(2)): the 18 identifiers removed
(by the roles above), every element of a date except the year, ages over 89 as one group, ZIP3
with the restricted areas zeroed, and record codes that are not derived from information about
the individual (164.514(c)). ``longitudinal`` is **not** Safe Harbor: its day-precise shifted
dates and keyed pseudonyms (shared with the DICOM pipeline, so images and records of a patient
join) make it a research profile for an expert determination (164.514(b)(1)) or a limited data set
under a data use agreement (164.514(e)). The profile is written into every output's manifest.

Columns the mapping does not name are dropped (and reported), whatever their type.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from medray.data.shards import PATIENT_PSEUDONYM
from medray.errors import ConfigError
from medray.logs import get_logger
from medray.privacy.crosswalk import Crosswalk
from medray.privacy.notes import NoteScrubber, name_words, scrubber_for
from medray.privacy.pseudonym import date_shifts, pseudonyms

__all__ = [
    "MAX_AGE_YEARS",
    "OLDEST_AGE_GROUP",
    "RESTRICTED_ZIP3",
    "ROLES",
    "PROFILES",
    "PROFILE_RULES",
    "AGE_COLUMN",
    "TableMapping",
    "EmrMapping",
    "TableResult",
    "age_group",
    "deidentify_table",
    "identifier_kinds",
    "identifier_values",
    "name_values",
]

MAX_AGE_YEARS = 89
OLDEST_AGE_GROUP = "90+"
# ZIP3 areas with fewer than 20,000 inhabitants (2000 Census), which Safe Harbor says to zero.
RESTRICTED_ZIP3 = frozenset({"036", "059", "063", "102", "203", "556", "692", "790", "821", "823",
                             "830", "831", "878", "879", "884", "890", "893"})
ROLES = ("patient_id", "keep", "remove", "name", "pseudonym", "date", "birth_date", "age", "zip",
         "note", "free_text")
AGE_COLUMN = "age"
PROFILES = ("safe_harbor", "longitudinal")
# What each profile implements, as written into the outputs' manifests.
PROFILE_RULES = {
    "safe_harbor": "HIPAA Safe Harbor, 45 CFR 164.514(b)(2): dates to the year, ages over 89 as 90+, ZIP3 "
                   "with restricted areas zeroed, identifiers removed; record codes from a random crosswalk "
                   "(164.514(c))",
    "longitudinal": "not Safe Harbor: keyed pseudonyms and per-patient date shifts shared with DICOM; needs an "
                    "expert determination (164.514(b)(1)) or a limited data set under a data use agreement "
                    "(164.514(e))",
}
_MAPPING_VERSION = 2
_log = get_logger("medray.privacy.emr")


def age_group(years: int) -> str:
    """An age in whole years as Safe Harbor allows it: "NN", or "90+" above 89."""
    return OLDEST_AGE_GROUP if years > MAX_AGE_YEARS else str(years)


@dataclass(frozen=True)
class TableMapping:
    """Roles of one table's columns; ``patient_id`` names the MRN column."""

    patient_id: str
    columns: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.patient_id, str) or not self.patient_id:
            raise ConfigError("each table mapping needs patient_id: the name of its MRN column")
        unknown = {c: r for c, r in self.columns.items() if r not in ROLES or r == "patient_id"}
        if unknown:
            raise ConfigError(
                f"unknown roles {unknown}: use one of {[r for r in ROLES if r != 'patient_id']} "
                "(the MRN column is named by patient_id)"
            )
        if self.patient_id in self.columns:
            raise ConfigError(f"column {self.patient_id!r} is the patient_id: do not list it again")
        if AGE_COLUMN in self.columns and "birth_date" in self.columns.values():
            raise ConfigError(f"a birth_date column adds {AGE_COLUMN!r}: rename the existing one")
        object.__setattr__(self, "columns", dict(self.columns))


@dataclass(frozen=True)
class EmrMapping:
    """Column roles per table (by table name, the file stem), the age reference date and the
    profile (:data:`PROFILES`) the roles are applied under."""

    tables: Mapping[str, TableMapping]
    age_reference_date: date
    profile: str = "longitudinal"

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"unknown profile {self.profile!r}: use one of {list(PROFILES)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EmrMapping:
        """Validate a parsed mapping file (see :meth:`to_dict` for the layout)."""
        if not isinstance(d, Mapping) or d.get("version") not in (1, _MAPPING_VERSION):
            raise ConfigError(f"an EMR mapping must be a mapping with version: {_MAPPING_VERSION}")
        if d["version"] == 1:
            # Version 1 had no profile and always ran what is now "longitudinal" (it called it Safe Harbor).
            _log.warning("EMR mapping version 1 runs the longitudinal profile, which is not Safe Harbor: "
                         "write version: 2 with profile: safe_harbor or profile: longitudinal")
            profile = "longitudinal"
        elif d.get("profile") not in PROFILES:
            raise ConfigError(f"the EMR mapping must name its profile: one of {list(PROFILES)} "
                              "(see medray.privacy.emr: only safe_harbor is HIPAA Safe Harbor)")
        else:
            profile = d["profile"]
        unknown = sorted(set(d) - {"version", "age_reference_date", "tables", "profile"})
        if unknown:
            raise ConfigError(f"unknown keys {unknown} in the EMR mapping")
        try:
            reference = date.fromisoformat(str(d["age_reference_date"]))
        except (KeyError, ValueError):
            raise ConfigError(
                "age_reference_date must be an ISO date (YYYY-MM-DD), e.g. the extraction date"
            ) from None
        tables = d.get("tables")
        if not isinstance(tables, Mapping) or not tables:
            raise ConfigError("the EMR mapping needs tables: {name: {patient_id, columns}}")
        parsed = {}
        for name, t in tables.items():
            if not isinstance(t, Mapping) or set(t) - {"patient_id", "columns"}:
                raise ConfigError(f"table {name!r}: expected keys patient_id and columns")
            parsed[str(name)] = TableMapping(patient_id=t.get("patient_id"),
                                             columns=dict(t.get("columns") or {}))
        return cls(tables=parsed, age_reference_date=reference, profile=profile)

    @classmethod
    def load(cls, path: str | Path) -> EmrMapping:
        """Read a mapping from a YAML (.yaml/.yml) or JSON file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read EMR mapping {path}: {e.strerror}") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:  # yaml and json raise their own error types
            raise ConfigError(f"EMR mapping {path} is not valid YAML/JSON: {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The mapping as written in a mapping file."""
        return {
            "version": _MAPPING_VERSION,
            "profile": self.profile,
            "age_reference_date": self.age_reference_date.isoformat(),
            "tables": {n: {"patient_id": t.patient_id, "columns": dict(t.columns)}
                       for n, t in self.tables.items()},
        }

    @classmethod
    def default(cls, profile: str = "longitudinal") -> EmrMapping:
        """The mapping of :func:`medray.data.cohort.generate_cohort`'s EMR tables under ``profile``
        (longitudinal by default: the demo joins the records to the images by patient pseudonym)."""
        return cls.from_dict({**_SYNTH_MAPPING, "profile": profile})


_SYNTH_MAPPING: dict[str, Any] = {
    "version": _MAPPING_VERSION,
    "profile": "longitudinal",
    "age_reference_date": "2024-01-01",
    "tables": {
        "patients": {"patient_id": "mrn", "columns": {
            "first_name": "name", "last_name": "name", "birth_date": "birth_date",
            "sex": "keep", "street_address": "remove", "city": "remove", "state": "keep",
            "zip": "zip", "phone": "remove", "email": "remove", "ssn": "remove",
            "insurance_plan_id": "remove", "account_number": "remove"}},
        "encounters": {"patient_id": "mrn", "columns": {
            "encounter_id": "pseudonym", "admit_date": "date", "discharge_date": "date",
            "department": "keep", "attending_physician": "name", "note": "note"}},
        "labs": {"patient_id": "mrn", "columns": {
            "encounter_id": "pseudonym", "loinc_code": "keep", "test_name": "keep",
            "value": "keep", "unit": "keep", "collected_at": "date"}},
        "diagnoses": {"patient_id": "mrn", "columns": {
            "encounter_id": "pseudonym", "icd10_code": "keep", "description": "keep",
            "diagnosed_at": "date"}},
        "notes": {"patient_id": "mrn", "columns": {
            "note_id": "pseudonym", "encounter_id": "pseudonym", "written_at": "date", "note_type": "keep",
            "author": "name", "text": "note"}},
    },
}


@dataclass(frozen=True)
class TableResult:
    """A de-identified table and what was done to get it (column names and counts only)."""

    table: pa.Table
    rows_in: int
    rows_without_patient_id: int
    roles: dict[str, str]
    unmapped_dropped: tuple[str, ...]
    notes_found: dict[str, int] = field(default_factory=dict)


# --- Column transforms -----------------------------------------------------------------------

def _per_distinct(values: pa.ChunkedArray, fn: Callable[[list[str]], list[Any]],
                  out_type: pa.DataType) -> pa.Array:
    """``fn`` (a batch function) of each row's value, evaluated once per distinct value (nulls stay null)."""
    strings = pc.cast(values, pa.string())
    distinct = pc.unique(strings).drop_null()
    mapped = pa.array(fn(distinct.to_pylist()), type=out_type)
    return pc.take(mapped, pc.index_in(strings, value_set=distinct))


def _shift(values: pa.ChunkedArray, days: pa.Array, column: str) -> pa.Array:
    """Dates or timestamps moved by ``days`` (int32 per row); the type is kept."""
    t = values.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            values = pc.cast(values, pa.date32())
        except pa.ArrowInvalid:
            raise ConfigError(
                f"column {column!r} has role date but holds text that is not an ISO date "
                "(YYYY-MM-DD): convert it, or map it as free_text"
            ) from None
        t = values.type
    if pa.types.is_date(t):
        as_days = pc.cast(pc.cast(values, pa.date32()), pa.int32())
        return pc.cast(pc.cast(pc.add(as_days, days), pa.date32()), t)
    if pa.types.is_timestamp(t):
        per_day = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}[t.unit]
        delta = pc.cast(pc.multiply(pc.cast(days, pa.int64()), per_day), pa.duration(t.unit))
        return pc.add(values, delta)
    raise ConfigError(f"column {column!r} has role date but type {t}: only dates and timestamps shift")


def _as_dates(values: pa.ChunkedArray, column: str, role: str) -> pa.ChunkedArray:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            return pc.cast(values, pa.date32())
        except pa.ArrowInvalid:
            raise ConfigError(
                f"column {column!r} has role {role} but holds text that is not an ISO date "
                "(YYYY-MM-DD): convert it, or map it as free_text"
            ) from None
    if not (pa.types.is_date(values.type) or pa.types.is_timestamp(values.type)):
        raise ConfigError(f"column {column!r} has role {role} but type {values.type}: only dates and "
                          "timestamps are dates")
    return values


def _year(values: pa.ChunkedArray, column: str) -> pa.Array:
    """Safe Harbor's date: the year alone (int16)."""
    return pc.cast(pc.year(_as_dates(values, column, "date")), pa.int16())


def _age_text(years: pa.Array) -> pa.Array:
    text = pc.cast(years, pa.string())
    return pc.if_else(pc.greater(years, MAX_AGE_YEARS), OLDEST_AGE_GROUP, text)


def _ages(values: pa.ChunkedArray, column: str) -> pa.Array:
    try:
        years = pc.cast(pc.floor(pc.cast(values, pa.float64())), pa.int32())
    except pa.ArrowInvalid:
        raise ConfigError(f"column {column!r} has role age but holds non-numeric values") from None
    return _age_text(years)


def _birth_dates(values: pa.ChunkedArray, days: pa.Array | None, reference: date,
                 column: str) -> tuple[pa.Array, pa.Array]:
    """(birth dates shifted by ``days``, or their year when ``days`` is None, null where older than
    89; age text at ``reference``)."""
    born = pc.cast(_as_dates(values, column, "birth_date"), pa.date32())
    month_day = pc.add(pc.multiply(pc.month(born), 100), pc.day(born))
    before_birthday = pc.cast(pc.greater(month_day, reference.month * 100 + reference.day), pa.int64())
    years = pc.subtract(pc.subtract(reference.year, pc.year(born)), before_birthday)
    out = _shift(values, days, column) if days is not None else pc.cast(pc.year(born), pa.int16())
    too_old = pc.fill_null(pc.greater(years, MAX_AGE_YEARS), False)
    return pc.if_else(too_old, pa.scalar(None, out.type), out), _age_text(years)


def _zip3(values: pa.ChunkedArray) -> pa.Array:
    """First three digits; restricted areas -> "000"; anything that is not a ZIP -> null."""
    if pa.types.is_integer(values.type):  # 02114 stored as 2114
        text = pc.utf8_lpad(pc.cast(values, pa.string()), 5, "0")
    else:
        text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    zip3 = pc.utf8_slice_codeunits(text, 0, 3)
    valid = pc.match_substring_regex(text, r"^\d{5}(-?\d{4})?$")
    zip3 = pc.if_else(pc.fill_null(valid, False), zip3, pa.scalar(None, pa.string()))
    restricted = pa.array(sorted(RESTRICTED_ZIP3))
    return pc.if_else(pc.fill_null(pc.is_in(zip3, value_set=restricted), False), "000", zip3)


# --- Tables ----------------------------------------------------------------------------------

def identifier_kinds(mapping: TableMapping) -> dict[str, str]:
    """Column -> kind of identifier that gets a pseudonym or crosswalk code (the MRN is ``patient``)."""
    return {mapping.patient_id: "patient",
            **{c: c for c, role in mapping.columns.items() if role == "pseudonym"}}


def _with_patient_id(table: pa.Table, mapping: TableMapping) -> tuple[pa.Table, pa.ChunkedArray]:
    """(the rows that have an MRN, their MRNs trimmed)."""
    if mapping.patient_id not in table.column_names:
        raise ConfigError(
            f"the table has no patient_id column {mapping.patient_id!r}: fix the mapping"
        )
    mrn = pc.utf8_trim(pc.cast(table[mapping.patient_id], pa.string()), " \t\r\n\0")
    has_id = pc.fill_null(pc.greater(pc.utf8_length(mrn), 0), False)
    if not pc.all(has_id).as_py():
        table, mrn = table.filter(has_id), pc.filter(mrn, has_id)
    return table, mrn


def identifier_values(table: pa.Table, mapping: TableMapping) -> dict[str, list[str]]:
    """Kind -> the distinct identifiers of ``table`` that get codes, read as :func:`deidentify_table`
    reads them (what a :class:`Crosswalk` must hold before it runs under ``safe_harbor``)."""
    table, mrn = _with_patient_id(table, mapping)
    values = {"patient": mrn}
    values.update({kind: table[column] for column, kind in identifier_kinds(mapping).items()
                   if kind != "patient" and column in table.column_names})
    return {kind: pc.unique(pc.cast(v, pa.string())).drop_null().to_pylist() for kind, v in values.items()}


def name_values(table: pa.Table, mapping: TableMapping) -> set[str]:
    """The words of the person names in ``table``'s ``name`` columns (the notes' own dictionary)."""
    columns = [c for c, role in mapping.columns.items() if role == "name" and c in table.column_names]
    return name_words(v for c in columns for v in pc.unique(pc.cast(table[c], pa.string())).to_pylist())


def _scrub_notes(values: pa.ChunkedArray, scrubber: NoteScrubber, profile: str, days: pa.Array | None,
                 found: Counter[str], column: str) -> pa.Array:
    """Each note scrubbed (nulls stay null); ``found`` counts what was replaced."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise ConfigError(f"column {column!r} has role note but type {values.type}: notes are text")
    shifts = days.to_pylist() if days is not None else [None] * len(values)
    out = []
    for text, shift in zip(values.to_pylist(), shifts):
        if text is None:
            out.append(None)
            continue
        scrubbed = scrubber.scrub(text, profile=profile, shift_days=shift)
        found.update(scrubbed.found)
        out.append(scrubbed.text)
    return pa.array(out, pa.string())


def deidentify_table(table: pa.Table, mapping: TableMapping, key: bytes, *,
                     age_reference_date: date, profile: str = "longitudinal",
                     crosswalk: Crosswalk | None = None, scrubber: NoteScrubber | None = None) -> TableResult:
    """De-identify one table by its column roles under ``profile`` (see the module docstring).

    ``safe_harbor`` takes its record codes from ``crosswalk``, which must hold every identifier of
    the table (:meth:`Crosswalk.add` each of :func:`identifier_values`). ``note`` columns are
    scrubbed by ``scrubber`` (default: one whose dictionary adds this table's :func:`name_values`;
    pass one built from the names of every table, as the EMR pipeline does).
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: use one of {list(PROFILES)}")
    if profile == "safe_harbor" and crosswalk is None:
        raise ConfigError("the safe_harbor profile takes its record codes from a crosswalk file kept with the "
                          "key: pass one (--crosswalk FILE)")
    rows_in = table.num_rows
    table, mrn = _with_patient_id(table, mapping)

    def codes(values: pa.ChunkedArray, kind: str) -> pa.Array:
        if crosswalk is not None and profile == "safe_harbor":
            return _per_distinct(values, lambda vs: crosswalk.codes(vs, kind), pa.string())
        return _per_distinct(values, lambda vs: pseudonyms(key, vs, kind=kind), pa.string())

    patient = codes(mrn, "patient")
    days = _per_distinct(mrn, lambda vs: date_shifts(key, vs), pa.int32()) if profile == "longitudinal" else None
    names: list[str] = [PATIENT_PSEUDONYM]
    columns: list[pa.Array | pa.ChunkedArray] = [patient]
    roles: dict[str, str] = {}
    unmapped = []
    found: Counter[str] = Counter()
    if scrubber is None and "note" in mapping.columns.values():
        scrubber = scrubber_for(tuple(sorted(name_values(table, mapping))))
    for name in table.column_names:
        if name == mapping.patient_id:
            continue
        role = mapping.columns.get(name)
        if role is None:
            unmapped.append(name)
            continue
        roles[name] = role
        values = table[name]
        if role in ("remove", "name", "free_text"):
            continue
        if role == "keep":
            out = values
        elif role == "pseudonym":
            out = codes(values, name)
        elif role == "date":
            out = _shift(values, days, name) if days is not None else _year(values, name)
        elif role == "age":
            out = _ages(values, name)
        elif role == "zip":
            out = _zip3(values)
        elif role == "note":
            out = _scrub_notes(values, scrubber, profile, days, found, name)
        else:  # birth_date: the age column follows it
            out, ages = _birth_dates(values, days, age_reference_date, name)
            names += [name, AGE_COLUMN]
            columns += [out, ages]
            continue
        names.append(name)
        columns.append(out)
    return TableResult(
        table=pa.table(columns, names=names),
        rows_in=rows_in,
        rows_without_patient_id=rows_in - table.num_rows,
        roles=roles,
        unmapped_dropped=tuple(unmapped),
        notes_found=dict(sorted(found.items())),
    )
