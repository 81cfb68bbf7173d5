"""medray.privacy.emr: vectorised de-identification of EMR tables under the longitudinal research profile
and under HIPAA Safe Harbor (no cluster)."""

import json
from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

import medray.privacy.emr as emr_module
from medray.data.cohort import generate_cohort
from medray.data.shards import PATIENT_PSEUDONYM
from medray.errors import ConfigError
from medray.privacy.crosswalk import Crosswalk
from medray.privacy.emr import (
    AGE_COLUMN,
    OLDEST_AGE_GROUP,
    RESTRICTED_ZIP3,
    EmrMapping,
    TableMapping,
    age_group,
    deidentify_table,
    identifier_values,
    name_values,
)
from medray.privacy.notes import NoteScrubber
from medray.privacy.pseudonym import date_shift_days, pseudonym

KEY = b"k" * 32
MAPPING = EmrMapping.default()
REFERENCE = MAPPING.age_reference_date
# The notes' scrubber, built once from the cohort's name columns (as the EMR pipeline does).
_SCRUBBER: dict[str, NoteScrubber] = {}


@pytest.fixture(scope="module")
def emr(tmp_path_factory) -> dict[str, pa.Table]:
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, patients=30, rows=32, slices=2, nodule_fraction=0.0)
    tables = {"patients": pq.read_table(out / "emr/patients.parquet"),
              "encounters": pq.read_table(out / "emr/encounters.parquet"),
              "labs": pa_csv.read_csv(out / "emr/labs.csv"),
              "diagnoses": pa_csv.read_csv(out / "emr/diagnoses.csv"),
              "notes": pq.read_table(out / "emr/notes.parquet")}
    _SCRUBBER["cohort"] = NoteScrubber(set().union(*(name_values(t, MAPPING.tables[n]) for n, t in tables.items())))
    return tables


def deid(table: pa.Table, name: str):
    return deidentify_table(table, MAPPING.tables[name], KEY, age_reference_date=REFERENCE,
                            scrubber=_SCRUBBER["cohort"])


def cells(table: pa.Table) -> set[str]:
    return {str(v) for col in table.columns for v in col.to_pylist() if v is not None}


def test_identifiers_of_the_synthetic_cohort_are_gone(emr):
    people = emr["patients"].to_pylist()
    canaries = {p[k] for p in people for k in ("mrn", "first_name", "last_name", "street_address",
                                               "city", "zip", "phone", "email", "ssn",
                                               "insurance_plan_id", "account_number")}
    canaries |= {str(p["birth_date"]) for p in people}
    canaries |= set(emr["encounters"]["attending_physician"].to_pylist())
    canaries |= set(emr["encounters"]["encounter_id"].to_pylist())
    for name, table in emr.items():
        out = cells(deid(table, name).table)
        leaked = {c for c in canaries if any(c in v for v in out)}
        assert not leaked, f"{name}: {len(leaked)} identifiers leaked"


def test_patient_pseudonym_matches_the_dicom_rule_row_by_row(emr):
    for name, table in emr.items():
        result = deid(table, name).table
        assert result.column_names[0] == "patient_pseudonym"
        expected = [pseudonym(KEY, m, kind="patient") for m in table["mrn"].to_pylist()]
        assert result["patient_pseudonym"].to_pylist() == expected


def test_dates_and_timestamps_shift_by_the_patient_offset(emr):
    enc, labs = emr["encounters"], emr["labs"]
    out = deid(enc, "encounters").table
    for mrn, before, after in zip(enc["mrn"].to_pylist(), enc["admit_date"].to_pylist(),
                                  out["admit_date"].to_pylist()):
        assert after == before + timedelta(days=date_shift_days(KEY, mrn))
    out = deid(labs, "labs").table
    assert out["collected_at"].type == labs["collected_at"].type
    for mrn, before, after in zip(labs["mrn"].to_pylist(), labs["collected_at"].to_pylist(),
                                  out["collected_at"].to_pylist()):
        assert after == before + timedelta(days=date_shift_days(KEY, mrn))


def test_birth_dates_of_people_over_89_are_suppressed_and_aged_90_plus(emr):
    patients = emr["patients"]
    out = deid(patients, "patients").table
    assert out.column_names[:3] == ["patient_pseudonym", "birth_date", "age"]
    seen_old = 0
    for mrn, born, shifted, age in zip(patients["mrn"].to_pylist(), patients["birth_date"].to_pylist(),
                                       out["birth_date"].to_pylist(), out["age"].to_pylist()):
        years = REFERENCE.year - born.year - ((REFERENCE.month, REFERENCE.day) < (born.month, born.day))
        assert age == age_group(years)
        if years > 89:
            seen_old += 1
            assert age == OLDEST_AGE_GROUP and shifted is None
        else:
            assert shifted == born + timedelta(days=date_shift_days(KEY, mrn))
    assert seen_old >= 1  # the cohort guarantees old patients: the rule was exercised


def test_zip3_with_the_low_population_rule():
    table = pa.table({"mrn": ["a", "b", "c", "d", "e", "f"],
                      "zip": ["02114", "03601", "97201-1234", "ABCDE", None, " 89011 "]})
    mapping = TableMapping(patient_id="mrn", columns={"zip": "zip"})
    out = deidentify_table(table, mapping, KEY, age_reference_date=REFERENCE).table
    assert out["zip"].to_pylist() == ["021", "000", "972", None, None, "000"]
    ints = pa.table({"mrn": ["a", "b"], "zip": pa.array([2114, 3601], pa.int64())})
    out = deidentify_table(ints, mapping, KEY, age_reference_date=REFERENCE).table
    assert out["zip"].to_pylist() == ["021", "000"]  # leading zeros restored first
    assert len(RESTRICTED_ZIP3) == 17


def test_ages_over_89_are_grouped():
    table = pa.table({"mrn": ["a", "b", "c", "d"], "age": pa.array([45, 89, 90, 104.5])})
    mapping = TableMapping(patient_id="mrn", columns={"age": "age"})
    out = deidentify_table(table, mapping, KEY, age_reference_date=REFERENCE).table
    assert out["age"].to_pylist() == ["45", "89", "90+", "90+"]


def test_unmapped_and_free_text_columns_are_dropped_and_reported(emr):
    encounters = emr["encounters"].append_column("pager", pa.array(["555"] * emr["encounters"].num_rows))
    result = deid(encounters, "encounters")
    assert result.roles["note"] == "note" and result.notes_found["PERSON"] >= encounters.num_rows
    assert "attending_physician" not in result.table.column_names and result.roles["attending_physician"] == "name"
    assert "pager" not in result.table.column_names and result.unmapped_dropped == ("pager",)
    mapping = TableMapping(patient_id="mrn", columns={"note": "free_text"})
    dropped = deidentify_table(emr["encounters"], mapping, KEY, age_reference_date=REFERENCE)
    assert dropped.table.column_names == [PATIENT_PSEUDONYM] and dropped.roles == {"note": "free_text"}


def test_rows_without_a_patient_id_are_dropped():
    table = pa.table({"mrn": ["a", None, "  ", "b"], "v": [1, 2, 3, 4]})
    result = deidentify_table(table, TableMapping(patient_id="mrn", columns={"v": "keep"}), KEY,
                              age_reference_date=REFERENCE)
    assert result.table["v"].to_pylist() == [1, 4]
    assert (result.rows_in, result.rows_without_patient_id) == (4, 2)


def test_pseudonymised_ids_join_across_tables(emr):
    encounters = deid(emr["encounters"], "encounters").table
    labs = deid(emr["labs"], "labs").table
    assert set(labs["encounter_id"].to_pylist()) <= set(encounters["encounter_id"].to_pylist())
    raw = emr["encounters"]["encounter_id"].to_pylist()
    assert encounters["encounter_id"].to_pylist() == [pseudonym(KEY, e, kind="encounter_id") for e in raw]


def test_keyed_functions_run_once_per_distinct_value_not_per_row(emr, monkeypatch):
    calls = []
    real = emr_module.pseudonyms

    def counting(key, values, *, kind):
        calls.extend([kind] * len(values))
        return real(key, values, kind=kind)

    monkeypatch.setattr(emr_module, "pseudonyms", counting)
    labs = emr["labs"]
    deid(labs, "labs")
    assert calls.count("patient") == len(set(labs["mrn"].to_pylist())) < labs.num_rows
    assert calls.count("encounter_id") == len(set(labs["encounter_id"].to_pylist())) < labs.num_rows


def test_mapping_files_round_trip_and_are_validated(tmp_path):
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(MAPPING.to_dict()))
    assert EmrMapping.load(path) == MAPPING
    yaml_path = tmp_path / "mapping.yaml"
    yaml_path.write_text("version: 2\nprofile: safe_harbor\nage_reference_date: 2023-06-30\ntables:\n"
                         "  visits: {patient_id: mrn, columns: {seen_on: date}}\n")
    loaded = EmrMapping.load(yaml_path)
    assert loaded.age_reference_date == date(2023, 6, 30) and loaded.profile == "safe_harbor"
    assert loaded.tables["visits"].columns == {"seen_on": "date"}
    with pytest.raises(ConfigError, match="unknown roles"):
        TableMapping(patient_id="mrn", columns={"name": "hash"})
    with pytest.raises(ConfigError, match="age_reference_date"):
        EmrMapping.from_dict({"version": 2, "profile": "longitudinal", "tables": {"t": {"patient_id": "mrn"}}})
    # A mapping must say which profile it runs; version 1 files ran the longitudinal one.
    with pytest.raises(ConfigError, match="must name its profile"):
        EmrMapping.from_dict({"version": 2, "age_reference_date": "2023-06-30", "tables": {"t": {"patient_id": "m"}}})
    old = EmrMapping.from_dict({"version": 1, "age_reference_date": "2023-06-30", "tables": {"t": {"patient_id": "m"}}})
    assert old.profile == "longitudinal"
    with pytest.raises(ConfigError, match="unknown profile"):
        EmrMapping(tables={}, age_reference_date=REFERENCE, profile="hipaa")
    with pytest.raises(ConfigError, match="patient_id column"):
        deidentify_table(pa.table({"id": ["x"]}), TableMapping(patient_id="mrn"), KEY,
                         age_reference_date=REFERENCE)


def test_text_dates_are_parsed_or_refused_without_quoting_values():
    mapping = TableMapping(patient_id="mrn", columns={"seen": "date"})
    ok = pa.table({"mrn": ["a"], "seen": ["2021-03-04"]})
    out = deidentify_table(ok, mapping, KEY, age_reference_date=REFERENCE).table
    assert out["seen"].to_pylist() == [date(2021, 3, 4) + timedelta(days=date_shift_days(KEY, "a"))]
    bad = pa.table({"mrn": ["a"], "seen": ["Jane Doe visited"]})
    with pytest.raises(ConfigError) as raised:
        deidentify_table(bad, mapping, KEY, age_reference_date=REFERENCE)
    assert "Jane" not in str(raised.value)


def test_timestamps_of_any_unit_shift_by_whole_days():
    for unit in ("s", "ms", "us", "ns"):
        t = pa.table({"mrn": ["a"], "at": pa.array([datetime(2020, 2, 29, 13, 5)], pa.timestamp(unit))})
        out = deidentify_table(t, TableMapping(patient_id="mrn", columns={"at": "date"}), KEY,
                               age_reference_date=REFERENCE).table
        shift = timedelta(days=date_shift_days(KEY, "a"))
        assert out["at"].to_pylist()[0] == datetime(2020, 2, 29, 13, 5) + shift


# Safe Harbor (45 CFR 164.514(b)(2)) -------------------------------------------------------------

SAFE = EmrMapping.default("safe_harbor")


def safe(emr, tmp_path):
    """Every table under safe_harbor, with one crosswalk filled from all of them first (as the pipeline does)."""
    walk = Crosswalk(tmp_path / "crosswalk.json", KEY)
    for name, table in emr.items():
        for kind, ids in identifier_values(table, SAFE.tables[name]).items():
            walk.add(ids, kind)
    walk.save()
    return {name: deidentify_table(table, SAFE.tables[name], KEY, age_reference_date=REFERENCE,
                                   profile="safe_harbor", crosswalk=walk, scrubber=_SCRUBBER["cohort"]).table
            for name, table in emr.items()}, walk


def test_safe_harbor_keeps_only_the_year_of_every_date(emr, tmp_path):
    out, _ = safe(emr, tmp_path)
    encounters = out["encounters"]
    assert encounters.schema.field("admit_date").type == pa.int16()
    assert encounters["admit_date"].to_pylist() == [d.year for d in emr["encounters"]["admit_date"].to_pylist()]
    labs = out["labs"]
    assert labs["collected_at"].to_pylist() == [
        pa.scalar(v).cast(pa.date32()).as_py().year if isinstance(v, str) else v.year
        for v in emr["labs"]["collected_at"].to_pylist()]
    patients = out["patients"]
    born = emr["patients"]["birth_date"].to_pylist()
    ages = patients[AGE_COLUMN].to_pylist()
    for birth, year, age in zip(born, patients["birth_date"].to_pylist(), ages):
        assert (year is None) == (age == OLDEST_AGE_GROUP)  # no birth year over 89, not even the year
        assert year is None or year == birth.year
    every_cell = set().union(*(cells(t) for t in out.values()))
    iso_dates = [c for c in every_cell if len(c) == 10 and c[4] == "-" and c[7] == "-"]
    assert not iso_dates, iso_dates[:3]


def test_safe_harbor_record_codes_are_random_not_derived_from_the_mrn(emr, tmp_path):
    out, walk = safe(emr, tmp_path)
    mrns = emr["patients"]["mrn"].to_pylist()
    codes = out["patients"][PATIENT_PSEUDONYM].to_pylist()
    assert len(set(codes)) == len(set(mrns))
    assert not set(codes) & {pseudonym(KEY, m, kind="patient") for m in mrns}  # not the keyed hash
    # The same patient has the same code in every table; encounter IDs still join labs to encounters.
    assert set(out["labs"][PATIENT_PSEUDONYM].to_pylist()) <= set(codes)
    assert set(out["labs"]["encounter_id"].to_pylist()) <= set(out["encounters"]["encounter_id"].to_pylist())
    # A second crosswalk (another export) under the same key draws other codes: nothing in a code
    # can be computed from the MRN; the file keeps digests and codes, never an MRN.
    _, other = safe(emr, tmp_path / "other")
    assert other.codes(mrns[:3], "patient") != walk.codes(mrns[:3], "patient")
    text = (tmp_path / "crosswalk.json").read_text()
    assert not [m for m in mrns if m in text]
    assert (tmp_path / "crosswalk.json").stat().st_mode & 0o777 == 0o600
    # Reloaded, the crosswalk gives the same codes (later exports join with this one).
    assert Crosswalk(tmp_path / "crosswalk.json", KEY).codes(mrns[:3], "patient") == walk.codes(mrns[:3], "patient")
    with pytest.raises(ConfigError, match="another key"):
        Crosswalk(tmp_path / "crosswalk.json", b"x" * 32)


def test_safe_harbor_handles_the_identifiers_like_the_longitudinal_profile_otherwise(emr, tmp_path):
    out, _ = safe(emr, tmp_path)
    longitudinal = deid(emr["patients"], "patients").table
    patients = out["patients"]
    assert patients.column_names == longitudinal.column_names
    assert patients["zip"].to_pylist() == longitudinal["zip"].to_pylist()
    assert patients[AGE_COLUMN].to_pylist() == longitudinal[AGE_COLUMN].to_pylist()
    with pytest.raises(ConfigError, match="crosswalk"):
        deidentify_table(emr["patients"], SAFE.tables["patients"], KEY, age_reference_date=REFERENCE,
                         profile="safe_harbor")


def test_safe_harbor_codes_cover_padded_and_odd_identifiers_as_the_table_is_read(tmp_path):
    mapping = TableMapping(patient_id="mrn", columns={"encounter_id": "pseudonym", "seen": "date"})
    table = pa.table({"mrn": [" MRN-1 ", "MRN-1", None, "  "], "encounter_id": [" e1", "e2", "e3", None],
                      "seen": [date(2020, 5, 1)] * 4})
    walk = Crosswalk(tmp_path / "crosswalk.json", KEY)
    for kind, ids in identifier_values(table, mapping).items():
        walk.add(ids, kind)
    out = deidentify_table(table, mapping, KEY, age_reference_date=REFERENCE, profile="safe_harbor",
                           crosswalk=walk)
    assert out.rows_without_patient_id == 2 and out.table.num_rows == 2
    first, second = out.table[PATIENT_PSEUDONYM].to_pylist()
    assert first == second  # the padded MRN is the same patient
    assert len(set(out.table["encounter_id"].to_pylist())) == 2 and out.table["seen"].to_pylist() == [2020, 2020]
