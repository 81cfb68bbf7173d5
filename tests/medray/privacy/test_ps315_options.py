"""medray.privacy.ps315 against PS3.15 Table E.1-1, attribute by attribute: the Basic Profile's
action of every row, and for every option the rows its column names (K kept, C cleaned) and no
other."""

import io
from datetime import date, timedelta

import pydicom
import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import validate_value

from medray.errors import ConfigError
from medray.privacy import ps315, ps315_options
from medray.privacy.ps315 import PROFILE_CODES, DeidOptions, deidentify, method_description, options_table
from medray.privacy.pseudonym import date_shift_days, pseudo_uid, pseudonym

KEY = bytes(range(32))
MRN = "MRN-77"
FAMILY = "Roe"
DESCRIPTOR = f"CHEST {FAMILY} 20200131"  # what C on text gets: a safe word, a name, a date
IDENTIFIER = f"{FAMILY} Rita"
NESTED_UID = "1.2.826.0.1.3680043.8.498.5"
_TIMEZONE = 0x00080201  # Timezone Offset From UTC (SH): C under modified dates, kept as it is
OPTIONS = [name for name in ps315_options.OPTIONS if name != "retain_safe_private"]


def _rows() -> list[tuple[int, str, dict[str, str]]]:
    """(tag, VR, row) of every attribute of the table that an image instance's dataset can hold:
    plain tags (not group 0000 or 0002) that pydicom's dictionary knows."""
    rows = []
    for row in options_table():
        pattern = ps315_options.tag_pattern(row["tag"])
        if pattern is None or pattern[2] != 0xFFFF or pattern[3] != 0xFFFF or pattern[0] in (0, 2):
            continue
        tag = pattern[0] << 16 | pattern[1]
        rows.append((tag, dictionary_VR(tag).split(" or ")[0], row))
    return rows


ROWS = _rows()


def _uid(tag: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{tag}"


def _planted(tag: int, vr: str, text: str) -> object:
    """A valid value of ``vr``; text VRs hold ``text``."""
    if tag == _TIMEZONE:
        return "+0100"
    by_vr = {"AE": "STATION7", "AS": "045Y", "AT": 0x00100010, "CS": text.upper()[:16], "DA": "20200131",
             "DT": "20200131120000", "TM": "120000", "DS": "1.5", "IS": "7", "UI": _uid(tag),
             "UR": "http://example.org/roe", "PN": "Roe^Rita", "FL": 1.5, "FD": 1.5}
    if vr in by_vr:
        return by_vr[vr]
    if vr in ("US", "SS", "UL", "SL", "UV", "SV"):
        return 7
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return b"\x01\x02\x03\x04\x05\x06\x07\x08"
    if vr == "SQ":
        item = Dataset()
        item.PatientName, item.CodeMeaning, item.ReferencedSOPInstanceUID = "Roe^Rita", "CHEST", NESTED_UID
        return Sequence([item])
    return text[:16] if vr == "SH" else text


def _dataset(cleaned: set[int] = frozenset()) -> Dataset:
    """Every row planted; the tags in ``cleaned`` hold DESCRIPTOR, others IDENTIFIER text."""
    ds = Dataset()
    for tag, vr, _ in ROWS:
        ds.add_new(tag, vr, _planted(tag, vr, DESCRIPTOR if tag in cleaned else IDENTIFIER))
    ds.PatientID, ds.PatientName = MRN, "Roe^Rita"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    ds.BurnedInAnnotation = "NO"
    return ds


def _empty(value) -> bool:
    return value in (None, "", b"") or (isinstance(value, (Sequence, MultiValue, list)) and len(value) == 0)


# PS3.15 E.1.1's action codes as dicom-anonymizer resolves the composite ones.
_RESOLVED = {"X": "X", "Z": "Z", "D": "D", "U": "U", "Z/D": "D", "X/Z": "Z", "X/D": "D", "X/Z/D": "D",
             "X/Z/U*": "U*"}
_SPECIAL = {0x00100020, 0x00080016, 0x00280301}  # PatientID (pseudonym), SOP Class, burned-in flag


def _basic_ok(tag: int, vr: str, action: str, out: Dataset) -> bool:
    """Whether ``out`` (de-identified, no option) applied ``action`` to ``tag``."""
    code = _RESOLVED[action]
    if code == "X":
        return tag not in out
    if tag not in out:
        return False
    value = out[tag].value
    if code == "Z":
        return _empty(value)
    if code == "D":
        if vr == "SQ":
            return len(value) == 1 and value[0].ReferencedSOPInstanceUID == pseudo_uid(KEY, NESTED_UID)
        if vr == "UI":
            return value == pseudo_uid(KEY, _uid(tag))
        return not _empty(value) and value != _planted(tag, vr, IDENTIFIER)
    if vr == "SQ":  # U* (and U on a sequence): kept, UIDs inside remapped
        return value[0].ReferencedSOPInstanceUID == pseudo_uid(KEY, NESTED_UID)
    return value == pseudo_uid(KEY, _uid(tag)) if vr == "UI" else _empty(value)


def test_every_attribute_of_the_table_gets_its_basic_profile_action():
    out = deidentify(_dataset(), KEY)
    wrong = [row["tag"] for tag, vr, row in ROWS
             if tag not in _SPECIAL and not _basic_ok(tag, vr, row["basicProfile"], out)]
    checked = len(ROWS) - len(_SPECIAL)
    assert checked > 590 and not wrong, f"{len(wrong)} of {checked} wrong: {wrong}"
    assert out.PatientID == pseudonym(KEY, MRN, kind="patient")


def _shifted(value: str) -> str:
    day = date(int(value[:4]), int(value[4:6]), int(value[6:8])) + timedelta(days=date_shift_days(KEY, MRN))
    return day.strftime("%Y%m%d") + value[8:]


def _cleaned_ok(tag: int, vr: str, out: Dataset, basic: Dataset) -> bool:
    """Whether ``tag`` was cleaned (C) for its VR, in ``out``; ``basic``: the output without options."""
    planted = _planted(tag, vr, DESCRIPTOR)
    if vr in ("DA", "DT"):
        return out[tag].value == _shifted(planted)
    if vr == "TM":
        return out[tag].value == planted
    if vr == "AE":
        return out[tag].value.startswith("AE") and out[tag].value != planted
    if vr == "SQ":
        item = out[tag].value[0]
        return item.CodeMeaning == "CHEST" and _empty(item.PatientName)
    if vr in ("OB", "OW", "UN", "US", "DS", "IS"):  # cannot be cleaned: the Basic Profile's action
        return (tag in out) == (tag in basic) and (tag not in out or out[tag].value == basic[tag].value)
    if tag == _TIMEZONE:  # nothing identifying in it
        return out[tag].value == planted
    return out[tag].value.upper() == "CHEST"


@pytest.mark.parametrize("option", OPTIONS)
def test_an_option_changes_exactly_the_attributes_its_column_names(option):
    column = ps315_options.OPTIONS[option][0]
    named = {tag: row[column] for tag, _, row in ROWS if column in row}
    assert named, column
    cleaned = {tag for tag, verdict in named.items() if verdict == "C"}
    basic = deidentify(_dataset(cleaned), KEY)
    out = deidentify(_dataset(cleaned), KEY, DeidOptions(**{option: True}))
    wrong = []
    for tag, vr, row in ROWS:
        if tag in _SPECIAL:
            continue
        verdict = named.get(tag)
        if verdict == "K":
            ok = tag in out and (out[tag].value == _planted(tag, vr, IDENTIFIER) or vr == "SQ")
        elif verdict == "C":
            ok = _cleaned_ok(tag, vr, out, basic)
        else:
            ok = (tag in out) == (tag in basic) and (tag not in out or vr == "SQ"
                                                     or out[tag].value == basic[tag].value)
        if not ok:
            wrong.append(row["tag"])
    assert not wrong, f"{option}: {len(wrong)} of {len(named)} named attributes wrong: {wrong}"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", PROFILE_CODES[option][0]]


def test_the_cid_7050_codes_are_the_standards():
    assert {name: code for name, (code, _) in PROFILE_CODES.items()} == {
        "basic": "113100", "clean_pixel_data": "113101", "retain_safe_private": "113111",
        "retain_uids": "113110",
        "retain_device_identity": "113109", "retain_institution_identity": "113112",
        "retain_patient_characteristics": "113108", "retain_full_dates": "113106",
        "retain_dates": "113107", "clean_descriptors": "113105", "clean_structured_content": "113104",
        "clean_graphics": "113103"}


def test_the_options_tables_basic_column_agrees_with_dicom_anonymizers():
    names = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
             "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
    theirs = {f"({r[0]:04X},{r[1]:04X})": names[c] for c in names for r in ps315._TABLE[c] if len(r) == 2}
    ours = {row["tag"]: row["basicProfile"] for row in options_table()}
    both = set(theirs) & set(ours)
    assert len(both) > 600
    assert [t for t in both if theirs[t] != ours[t]] == []


@pytest.mark.parametrize("vr", sorted(["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT",
                                       "OB", "OD", "OF", "OL", "OV", "OW", "PN", "SH", "SL", "SS", "ST", "SV",
                                       "TM", "UC", "UL", "UN", "UR", "US", "UT", "UV"]))
def test_a_dummy_is_non_empty_and_valid_for_every_vr(vr):
    value = ps315._dummy_value(vr)
    assert not _empty(value)
    validate_value(vr, value, config.RAISE)
    ds = Dataset()
    ds.add_new(0x00111010 if vr == "UN" else 0x00091010, vr, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    (elem,) = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
    assert not _empty(elem.value)


def test_binary_attributes_whose_action_is_d_get_a_non_empty_dummy():
    binary_d = [(tag, vr) for tag, vr, row in ROWS
                if vr in ("OB", "OW", "UN") and _RESOLVED[row["basicProfile"]] == "D"]
    assert binary_d
    out = deidentify(_dataset(), KEY)
    for tag, _ in binary_d:
        assert out[tag].value == b"\0\0"


def test_repeating_groups_under_clean_graphics():
    ds = _dataset()
    ds.add_new(0x60003000, "OW", b"\x01\x02")  # Overlay Data: binary, cannot be cleaned: removed
    ds.add_new(0x60024000, "LT", DESCRIPTOR)  # Overlay Comments: cleaned
    ds.add_new(0x50000010, "US", 3)  # Curve data: removed
    ds.add_new(0x60000010, "US", 512)  # Overlay Rows: not in the table: kept
    out = deidentify(ds, KEY, DeidOptions(clean_graphics=True))
    assert 0x60003000 not in out and 0x50000010 not in out
    assert out[0x60024000].value == "CHEST" and out[0x60000010].value == 512


def _with_meta() -> Dataset:
    ds = _dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_retain_uids_keeps_the_file_metas_instance_uid_with_the_datasets():
    out = deidentify(_with_meta(), KEY, DeidOptions(retain_uids=True))
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == _uid(0x00080018)
    plain = deidentify(_with_meta(), KEY)
    assert plain.file_meta.MediaStorageSOPInstanceUID == plain.SOPInstanceUID != _uid(0x00080018)


def test_retain_safe_private_keeps_only_the_listed_private_attributes_and_their_creator():
    ds = _dataset()
    ds.add_new(0x00430010, "LO", "GEMS_PARM_01")
    ds.add_new(0x00431027, "SH", "1.0:1")  # listed: kept
    ds.add_new(0x00431028, "LO", IDENTIFIER)  # same block, not listed: removed
    ds.add_new(0x00090010, "LO", "GEMS_IDEN_01")
    ds.add_new(0x00091027, "LO", IDENTIFIER)  # same element byte, another creator: removed
    safe = frozenset({("GEMS_PARM_01", 0x0043, 0x27)})
    out = deidentify(ds, KEY, DeidOptions(retain_safe_private=True, safe_private=safe))
    private = {int(e.tag): e.value for e in out if e.tag.is_private}
    assert private == {0x00430010: "GEMS_PARM_01", 0x00431027: "1.0:1"}
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113111"]
    assert not [e for e in deidentify(ds, KEY) if e.tag.is_private]


def test_clean_text_removes_the_instances_identifiers_and_patterns():
    ds = _dataset({0x00081030})
    ds.AccessionNumber = "ACC998877"
    ds.StudyDescription = ("CT CHEST roe ACC998877 call 555-123-4567 x@y.org https://h.example/p 12/31/2020 "
                           "5 mm")
    out = deidentify(ds, KEY, DeidOptions(clean_descriptors=True))
    assert out.StudyDescription == "CT CHEST call 5 mm"


def test_options_are_recorded_and_checked():
    everything = DeidOptions(**{name: True for name in OPTIONS if name != "retain_full_dates"},
                             retain_safe_private=True)
    assert len(method_description(everything)) <= 64
    out = deidentify(_dataset(), KEY, everything)
    assert len(out.DeidentificationMethodCodeSequence) == 10 and out.PatientIdentityRemoved == "YES"
    full = deidentify(_dataset(), KEY, DeidOptions(retain_full_dates=True))
    assert full.LongitudinalTemporalInformationModified == "UNMODIFIED"
    with pytest.raises(ConfigError):
        DeidOptions(retain_dates=True, retain_full_dates=True)
    with pytest.raises(ConfigError):
        DeidOptions(retain_safe_private=True, safe_private=frozenset({("X", 0x0010, 1)}))  # even group
    with pytest.raises(ConfigError):
        DeidOptions(safe_private=frozenset({("X", 0x0011, 1)}))  # without the option
    assert everything.to_dict()["safe_private"] == []


def test_a_caller_that_cleaned_the_pixels_declares_it():
    out = deidentify(_dataset(), KEY, DeidOptions(retain_dates=True), pixels_cleaned=True)
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113101", "113107"]
    assert out.BurnedInAnnotation == "NO" and "clean pixels" in out.DeidentificationMethod
    plain = deidentify(_dataset(), KEY)
    assert "113101" not in [i.CodeValue for i in plain.DeidentificationMethodCodeSequence]
