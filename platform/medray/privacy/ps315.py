"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile.

The attribute table (which action applies to which tag) is the one maintained by the
``dicom-anonymizer`` package (``dicomfields_2026c``, from PS3.15 Table E.1-1). It is compiled once
per option set into a ``{tag: action}`` dict, so that de-identifying an instance is one dict lookup
per element it actually holds, never a loop over the ~650 rules, and raw (undecoded) elements that
are kept or removed are never converted. The table is loaded at import: a dicom-anonymizer without
it raises ImportError naming the supported versions. Options:

* **Retain Longitudinal Temporal Information with Modified Dates** (``retain_dates``): every date
  (DA) and date-time (DT) the table would clean is shifted by ``date_shift_days(key, mrn)`` days,
  the offset the EMR pipeline uses; times are kept. Otherwise dates are emptied or replaced.
  Patient's Birth Date is always emptied.
* **Retain Patient Characteristics** (``retain_patient_characteristics``): sex, age, size,
  weight, ethnic group, smoking and pregnancy status are kept; ages over 89 become ``090Y``
  (HIPAA Safe Harbor's "90 or older").

Always: UIDs are replaced by ``pseudo_uid(key, uid)`` (consistent across instances, series and
runs), PatientID by ``pseudonym(key, mrn, kind="patient")``, private elements are removed,
PatientIdentityRemoved is YES and DeidentificationMethod / DeidentificationMethodCodeSequence
(CID 7050) name the profile and options. Composite actions resolve like dicom-anonymizer's
(X/Z, X/D, X/Z/D, Z/D keep the element with an empty or dummy value; X/Z/U* remaps UIDs).

:func:`check_deidentifiable` runs the refusal checks alone (cheap: pipelines run it on every
instance and clean in full only the headers they write). Instances the profile cannot clean are
refused with a :class:`~medray.errors.DicomError`:
``burned_in_annotation`` (BurnedInAnnotation = YES), ``cannot_deidentify`` (document, report and
video SOP classes, and image classes that usually carry burned-in text unless BurnedInAnnotation
says NO), ``missing_patient_id`` (no PatientID to pseudonymise and shift dates by).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from importlib import metadata
from typing import Any

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from medray.dicom.quiet import silenced_warnings
from medray.dicom.values import parse_age, parse_date
from medray.errors import DicomError
from medray.privacy.emr import MAX_AGE_YEARS
from medray.privacy.pseudonym import date_shift_days, pseudo_uid, pseudonym

__all__ = [
    "TABLE_VERSION",
    "DEID_REASONS",
    "PROFILE_CODES",
    "DeidOptions",
    "check_deidentifiable",
    "deidentify",
    "method_description",
]

# The dicom-anonymizer table compiled here (its newest edition of PS3.15 Table E.1-1), a module of
# that package named by its edition: the versions that ship it are those pyproject.toml allows.
TABLE_VERSION = "dicomfields_2026c"
_SUPPORTED_ANONYMIZER = "dicom-anonymizer>=2.1,<2.2"

# Reason codes added to medray.dicom.volume.REASONS by de-identification.
DEID_REASONS: tuple[str, ...] = ("cannot_deidentify", "missing_patient_id", "deid_failed")

# CID 7050 "De-identification Method": (code value, code meaning), coding scheme DCM.
PROFILE_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "retain_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
}


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 options apply on top of the Basic Profile."""

    retain_dates: bool = False
    retain_patient_characteristics: bool = False


# --- Actions ---------------------------------------------------------------------------------
_KEEP, _REMOVE, _EMPTY, _DUMMY, _UID, _SEQ_UIDS, _SHIFT, _PATIENT_ID, _AGE = range(9)

# dicom-anonymizer category -> action; composites resolve as dicom-anonymizer resolves them.
_CATEGORY_ACTIONS = {
    "X_TAGS": _REMOVE,
    "Z_TAGS": _EMPTY,
    "D_TAGS": _DUMMY,
    "U_TAGS": _UID,
    "Z_D_TAGS": _DUMMY,
    "X_Z_TAGS": _EMPTY,
    "X_D_TAGS": _DUMMY,
    "X_Z_D_TAGS": _DUMMY,
    "X_Z_U_STAR_TAGS": _SEQ_UIDS,
}

_PATIENT_ID_TAG = 0x00100020
_PLAIN_TEXT = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but the backslash
_BIRTH_DATE_TAG = 0x00100030
_AGE_TAG = 0x00101010
# PS3.15 Table E.1-1, column "Rtn. Pat. Chars. Opt." = K (those marked C hold free text: removed).
_PATIENT_CHARACTERISTICS = (
    0x00100040,  # Patient's Sex
    _AGE_TAG,  # Patient's Age (capped, see _AGE)
    0x00101020,  # Patient's Size
    0x00101030,  # Patient's Weight
    0x00102160,  # Ethnic Group
    0x001021A0,  # Smoking Status
    0x001021C0,  # Pregnancy Status
    0x00102203,  # Patient's Sex Neutered
)

# Image classes whose pixels usually carry burned-in text (names, dates): accepted only with an
# explicit BurnedInAnnotation = NO. Prefix match on SOP Class UID.
_NEEDS_BURNED_IN_NO = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (all kinds)
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame
    "1.2.840.10008.5.1.4.1.1.77.1.",  # Visible Light (endoscopy, photography, video)
)
# Classes whose content is free text or a document: no automatic cleaning is safe.
_UNCLEANABLE = (
    "1.2.840.10008.5.1.4.1.1.88.",  # Structured Reports and Key Objects
    "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated PDF, CDA, STL, OBJ, MTL
    "1.2.840.10008.5.1.4.1.1.9.",  # Waveforms (annotations are free text)
)

_UN = "UN"
_DUMMY_TEXT = "REMOVED"
_DUMMY_DATE = "19000101"
_DUMMY_BY_VR: dict[str, str] = {
    "AS": "000Y",
    "DA": _DUMMY_DATE,
    "DT": _DUMMY_DATE + "000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "UR": "",
}
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})


@dataclass(frozen=True)
class _Rules:
    """A compiled table: exact tags, and the (group, element, masks) rules of repeating groups."""

    exact: dict[int, int]
    masked: tuple[tuple[int, int, int, int, int], ...]
    masked_groups: frozenset[int]

    def action(self, tag: int) -> int | None:
        found = self.exact.get(tag)
        if found is not None or not self.masked:
            return found
        group, element = tag >> 16, tag & 0xFFFF
        if group & 0xFF00 not in self.masked_groups:
            return None
        for g, e, gmask, emask, act in self.masked:
            if group & gmask == g & gmask and element & emask == e & emask:
                return act
        return None


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return _UN


def _load_table(version: str) -> dict[str, Any]:
    """dicom-anonymizer's table ``version``: per category, (group, element) rules and (group, element,
    group mask, element mask) ones; ImportError when the installed package lacks it in that form."""
    try:
        table = dicom_anonymization_database_selector(version)
    except (ValueError, AttributeError):  # no such module, or one without every category
        table = {}
    if not all(category in table and all(isinstance(rule, tuple) and len(rule) in (2, 4)
                                         for rule in table[category])
               for category in _CATEGORY_ACTIONS):
        raise ImportError(
            f"medray.privacy.ps315 compiles dicom-anonymizer's PS3.15 table {version}, which the "
            f"installed dicom-anonymizer {metadata.version('dicom-anonymizer')} does not ship in the "
            f"form expected: install {_SUPPORTED_ANONYMIZER}"
        )
    return table


# Loaded at import, so that an unsupported dicom-anonymizer fails before any instance is read.
_TABLE = _load_table(TABLE_VERSION)


@lru_cache(maxsize=None)
def _rules(options: DeidOptions) -> _Rules:
    """Compile the dicom-anonymizer table, with ``options`` folded in, into a lookup."""
    exact: dict[int, int] = {}
    masked = []
    for category, action in _CATEGORY_ACTIONS.items():
        for rule in _TABLE[category]:
            if len(rule) == 4:
                masked.append((*rule, action))
            else:
                exact[(rule[0] << 16) | rule[1]] = action
    if options.retain_dates:
        # The option's column of Table E.1-1 modifies every date and keeps times.
        by_vr = {"DA": _SHIFT, "DT": _SHIFT, "TM": _KEEP}
        exact = {tag: by_vr.get(_vr_of(tag), action) for tag, action in exact.items()}
    exact[_BIRTH_DATE_TAG] = _EMPTY
    exact[_PATIENT_ID_TAG] = _PATIENT_ID
    if options.retain_patient_characteristics:
        for tag in _PATIENT_CHARACTERISTICS:
            exact[tag] = _KEEP
        exact[_AGE_TAG] = _AGE
    return _Rules(exact=exact, masked=tuple(masked),
                  masked_groups=frozenset(r[0] & r[2] for r in masked))


def method_description(options: DeidOptions) -> str:
    """The DeidentificationMethod text (LO, at most 64 characters) for ``options``."""
    parts = ["PS3.15 E basic"]
    if options.retain_dates:
        parts.append("modified dates")
    if options.retain_patient_characteristics:
        parts.append("patient chars")
    return "medray " + "; ".join(parts)


# --- Applying the rules ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Context:
    key: bytes
    rules: _Rules
    shift_days: int
    patient: str


def _shift_date(text: str, vr: str, days: int) -> str | None:
    """A DA or DT value shifted by ``days`` (a DT's time kept); None when not a full date."""
    day = parse_date(text, vr)
    if day is None:
        return None
    try:
        shifted = day + timedelta(days=days)
    except OverflowError:
        return None
    return shifted.strftime("%Y%m%d") + text[8:]


def _capped_age(value: str) -> str:
    """An AS value with years above 89 capped at 090Y (HIPAA 164.514(b)(2)(i)(C)); malformed
    values become empty."""
    age = parse_age(value)
    if age is None:
        return ""
    if age[1] == "Y" and age[0] > MAX_AGE_YEARS:
        return f"{MAX_AGE_YEARS + 1:03d}Y"
    return value.strip()


def _empty_value(vr: str) -> Any:
    if vr == "SQ":
        return Sequence()
    if vr in _NUMERIC_VRS:
        return None
    return b"" if vr in _BINARY_VRS else ""


def _dummy_value(vr: str) -> Any:
    if vr in _NUMERIC_VRS:
        return 0
    if vr in _BINARY_VRS:
        return b""
    return _DUMMY_BY_VR.get(vr, _DUMMY_TEXT)


def _strings(elem: DataElement | RawDataElement) -> list[str]:
    """The values of an ASCII element (UI, DA, DT), read from raw bytes without conversion."""
    value = elem.value
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace").strip(" \0")
        return [v.strip(" \0") for v in text.split("\\")] if text else []
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple, MultiValue)) else [str(value)]


def _joined(values: list[str]) -> Any:
    return values if len(values) > 1 else (values[0] if values else "")


def _shifted(elem: DataElement | RawDataElement, vr: str, days: int) -> Any:
    shifted = [_shift_date(v, vr, days) for v in _strings(elem)]
    # A partial or malformed date cannot be shifted: it is removed instead.
    return "" if any(s is None for s in shifted) else _joined(shifted)  # type: ignore[arg-type]


def _uids(elem: DataElement | RawDataElement, ctx: _Context) -> Any:
    return _joined([pseudo_uid(ctx.key, v) for v in _strings(elem)])


def _dummy_sequence(elem: DataElement, ctx: _Context) -> None:
    """D on a sequence: every nested value replaced by a dummy of its VR, UIDs remapped."""
    for item in elem.value:
        for nested in item:
            if nested.VR == "SQ":
                _dummy_sequence(nested, ctx)
            else:
                nested.value = _uids(nested, ctx) if nested.VR == "UI" else _dummy_value(nested.VR)


def _apply(ds: Dataset, ctx: _Context) -> None:
    """Apply the compiled rules to every element of ``ds``, recursing into kept sequences.

    Elements are read raw (``get_item``) and replaced by new elements, so that values which are
    kept or thrown away are never decoded or validated.
    """
    rules = ctx.rules
    for tag in list(ds.keys()):
        number = int(tag)  # BaseTag compares in Python; plain ints hash and compare in C
        if number & 0x10000:  # odd group: private data elements and private creators
            del ds[tag]
            continue
        action = rules.action(number)
        raw = ds.get_item(tag)
        vr = raw.VR or _vr_of(number)
        if vr == _UN:
            raw = ds[tag]  # pydicom decodes UN of a known tag under its dictionary VR
            vr = raw.VR
            if vr == _UN:
                del ds[tag]  # an unknown element of a standard group: content cannot be checked
                continue
        if action is None or action == _KEEP:
            if vr == "SQ":
                for item in ds[tag].value:
                    _apply(item, ctx)
            continue
        if action == _REMOVE:
            del ds[tag]
            continue
        if (
            action == _EMPTY
            or (action == _UID and vr != "UI")
            or (action == _SHIFT and vr not in ("DA", "DT"))
        ):
            value = _empty_value(vr)
        elif action == _DUMMY:
            if vr == "SQ":
                _dummy_sequence(ds[tag], ctx)
                continue
            value = _uids(raw, ctx) if vr == "UI" else _dummy_value(vr)
        elif action == _UID:
            value = _uids(raw, ctx)
        elif action == _SEQ_UIDS:
            if vr == "SQ":
                for item in ds[tag].value:
                    _apply(item, ctx)
                continue
            value = _uids(raw, ctx) if vr == "UI" else _empty_value(vr)
        elif action == _SHIFT:
            value = _shifted(raw, vr, ctx.shift_days)
        elif action == _PATIENT_ID:
            value = ctx.patient
        else:  # _AGE
            value = _capped_age(ds[tag].value or "")
        ds[tag] = _element(tag, vr, value)


def _code(ds: Dataset, tag: int) -> str:
    """An ASCII element's first value (CS, UI), read raw; "" when absent."""
    elem = ds.get_item(tag)
    values = _strings(elem) if elem is not None else []
    return values[0].strip().upper() if values else ""


def check_deidentifiable(ds: Dataset) -> str:
    """Refuse what the profile cannot clean (see the module docstring); return the original MRN.

    Cheap (a few raw reads, no change to ``ds``): pipelines call it on every instance and
    de-identify in full only the headers they write. The MRN is PHI: use it, never log it.
    """
    burned_in = _code(ds, 0x00280301)  # BurnedInAnnotation
    if burned_in == "YES":
        raise DicomError(
            "burned_in_annotation",
            "the instance declares burned-in annotation (text in the pixels may identify the "
            "patient): it cannot be de-identified automatically; review it manually",
        )
    sop_class = _code(ds, 0x00080016)  # SOPClassUID
    if sop_class.startswith(_UNCLEANABLE):
        raise DicomError(
            "cannot_deidentify",
            "reports, documents and waveforms carry free text the Basic Profile cannot clean "
            "automatically: de-identify them with a reviewed, class-specific process",
        )
    if sop_class.startswith(_NEEDS_BURNED_IN_NO) and burned_in != "NO":
        raise DicomError(
            "cannot_deidentify",
            "secondary capture, ultrasound and visible-light images often carry burned-in text; "
            "accepted only with BurnedInAnnotation = NO: review the pixels and set it",
        )
    patient_id = ds.get_item(_PATIENT_ID_TAG)
    raw = getattr(patient_id, "value", None)
    if isinstance(raw, bytes) and _PLAIN_TEXT.fullmatch(raw):
        # Printable ASCII without a value delimiter reads the same in every character set
        # pydicom knows: skip its conversion (the pseudonyms and date shifts hang on this value).
        mrn = raw.decode("ascii").strip()
    else:
        with silenced_warnings():
            mrn = str(ds[_PATIENT_ID_TAG].value or "").strip() if patient_id is not None else ""
    if not mrn:
        raise DicomError(
            "missing_patient_id",
            "the instance has no PatientID, so it can neither be linked to the EMR nor have "
            "its dates shifted consistently: add the MRN at export",
        )
    return mrn


def _element(tag: int, vr: str, value: Any) -> DataElement:
    # Values built here are valid by construction: skip pydicom's per-assignment validation.
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _mark(ds: Dataset, options: DeidOptions) -> None:
    """Record what was done (PS3.15 E.1.1): identity removed, method text and CID 7050 codes."""
    wanted = ["basic"]
    wanted += ["retain_dates"] if options.retain_dates else []
    wanted += ["retain_patient_characteristics"] if options.retain_patient_characteristics else []
    items = []
    for name in wanted:
        value, meaning = PROFILE_CODES[name]
        item = Dataset()
        item[0x00080100] = _element(0x00080100, "SH", value)  # CodeValue
        item[0x00080102] = _element(0x00080102, "SH", "DCM")  # CodingSchemeDesignator
        item[0x00080104] = _element(0x00080104, "LO", meaning)  # CodeMeaning
        items.append(item)
    for tag, vr, value in (
        (0x00120062, "CS", "YES"),  # PatientIdentityRemoved
        (0x00120063, "LO", method_description(options)),  # DeidentificationMethod
        (0x00120064, "SQ", Sequence(items)),  # DeidentificationMethodCodeSequence
        # LongitudinalTemporalInformationModified
        (0x00280303, "CS", "MODIFIED" if options.retain_dates else "REMOVED"),
    ):
        ds[tag] = _element(tag, vr, value)


def deidentify(ds: Dataset, key: bytes, options: DeidOptions = DeidOptions()) -> Dataset:
    """De-identify ``ds`` in place (its file meta too) and return it.

    Raises DicomError (reasons ``burned_in_annotation``, ``cannot_deidentify``,
    ``missing_patient_id``, ``deid_failed``); ``ds`` is unchanged for the first three, and must
    be discarded after ``deid_failed``. Messages quote tag numbers at most, never values.
    """
    # pydicom warns about malformed values by quoting them, which may be PHI.
    with silenced_warnings():
        mrn = check_deidentifiable(ds)
        ctx = _Context(key=key, rules=_rules(options), shift_days=date_shift_days(key, mrn),
                       patient=pseudonym(key, mrn, kind="patient"))
        try:
            _apply(ds, ctx)
            meta = getattr(ds, "file_meta", None)
            if meta is not None:
                _apply(meta, ctx)
        except Exception as e:
            # Broad on purpose: a malformed element makes pydicom raise many kinds of error.
            # Only its type is kept: pydicom's messages can quote values.
            raise DicomError(
                "deid_failed",
                f"de-identification failed ({type(e).__name__}) on a malformed element: "
                "re-export the instance",
            ) from None
    _mark(ds, options)
    return ds
