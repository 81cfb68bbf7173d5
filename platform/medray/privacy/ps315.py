"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile and its options.

The Basic Profile's actions (which action applies to which tag) are those of the table maintained
by the ``dicom-anonymizer`` package (``dicomfields_2026c``, from PS3.15 Table E.1-1). The option
columns of the same table, which dicom-anonymizer does not ship, come from ``table_e1_1.json``
beside this module (Table E.1-1 as extracted from the standard by innolitics/dicom-standard; the
file records its source; its Basic Profile column agrees with dicom-anonymizer's on every
attribute both list, which a test checks). Both are compiled once per option set into a
``{tag: action}`` dict, so that de-identifying an instance is one dict lookup per element it
actually holds, never a loop over the ~650 rules, and raw (undecoded) elements that are kept or
removed are never converted. The table is loaded at import: a dicom-anonymizer without it raises
ImportError naming the supported versions.

Options (:class:`~medray.privacy.ps315_options.DeidOptions`, re-exported here with
:data:`PROFILE_CODES`, :func:`applied_codes` and :func:`method_description`; what each does: the
docstring of :mod:`medray.privacy.ps315_options`) fold the option columns into the same lookup.

Clean Pixel Data is run by the caller (:mod:`medray.privacy.pixels`: this module reads no pixels),
which says so with ``deidentify(..., pixels_cleaned=True)``; Clean Recognizable Visual Features is
not offered.

Always: UIDs are replaced by ``pseudo_uid(key, uid)`` (consistent across instances, series and
runs), PatientID by ``pseudonym(key, mrn, kind="patient")``; D gives a non-empty dummy valid for
the element's VR, binary VRs included; PatientIdentityRemoved is YES, and DeidentificationMethod
and DeidentificationMethodCodeSequence (CID 7050, the codes of pydicom's DCM code dictionary:
113100 and one per option) say what was done. Composite actions resolve like dicom-anonymizer's
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
from medray.privacy.ps315_options import (
    OPTIONS,
    OPTIONS_TABLE,
    PROFILE_CODES,
    DeidOptions,
    applied_codes,
    method_description,
    options_table,
    tag_pattern,
)
from medray.privacy.pseudonym import date_shift_days, pseudo_uid, pseudonym

__all__ = [
    "TABLE_VERSION",
    "OPTIONS_TABLE",
    "DEID_REASONS",
    "PROFILE_CODES",
    "DeidOptions",
    "applied_codes",
    "check_deidentifiable",
    "deidentify",
    "method_description",
    "options_table",
]

# The dicom-anonymizer table compiled here (its newest edition of PS3.15 Table E.1-1), a module of
# that package named by its edition: the versions that ship it are those pyproject.toml allows.
TABLE_VERSION = "dicomfields_2026c"
_SUPPORTED_ANONYMIZER = "dicom-anonymizer>=2.1,<2.2"

# Reason codes added to medray.dicom.volume.REASONS by de-identification.
DEID_REASONS: tuple[str, ...] = ("cannot_deidentify", "missing_patient_id", "deid_failed")

# --- Actions ---------------------------------------------------------------------------------
_KEEP, _REMOVE, _EMPTY, _DUMMY, _UID, _SEQ_UIDS, _SHIFT, _PATIENT_ID, _AGE, _CLEAN = range(10)

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
_PATIENT_NAME_TAG = 0x00100010
_PLAIN_TEXT = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but the backslash
_AGE_TAG = 0x00101010

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
# D: a non-empty value valid for the VR (PS3.5 Table 6.2-1), never one that could be real.
_DUMMY_BY_VR: dict[str, Any] = {
    "AS": "000Y",
    "DA": _DUMMY_DATE,
    "DT": _DUMMY_DATE + "000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "UR": "urn:medray:removed",
    # binary VRs: one zero value of their width (OB and UN padded to an even length)
    "OB": b"\0\0", "UN": b"\0\0", "OW": b"\0\0", "OF": b"\0" * 4, "OL": b"\0" * 4,
    "OD": b"\0" * 8, "OV": b"\0" * 8,
}
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})
_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "PN", "CS"})
# Values the scrub (C on text) takes out whatever the instance holds: dates, long numbers (IDs,
# accession and phone numbers), phone numbers with separators, e-mail addresses and URLs.
_PHI_PATTERNS = re.compile(
    r"\b\d{4}[-/.]?\d{2}[-/.]?\d{2}\b|\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b|\b\d{5,}\b"
    r"|\b\d{3}[-. ]\d{3,4}(?:[-. ]\d{4})?\b|[\w.+-]+@[\w-]+\.[\w.-]+|\b(?:https?://|www\.)\S+",
    re.IGNORECASE,
)
_TOKEN_SPLIT = re.compile(r"[\s^,;:/\\=()\[\]]+")
_MIN_TOKEN = 3


@dataclass(frozen=True)
class _Rules:
    """A compiled table: exact tags, and the (group, element, masks) rules of repeating groups."""

    exact: dict[int, int]
    masked: tuple[tuple[int, int, int, int, int], ...]
    masked_groups: frozenset[int]
    safe_private: frozenset[tuple[str, int, int]]
    cleans: bool  # whether any rule cleans (needs the instance's identifying values)
    basic: _Rules | None  # the Basic Profile's rules, for what C cannot clean (None: these are)

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
    columns = [OPTIONS[name][0] for name in options.chosen()]
    option_masked = []
    for row in options_table() if columns else ():
        verdicts = {row[c] for c in columns if c in row}
        if not verdicts:
            continue
        action = _KEEP if "K" in verdicts else _CLEAN  # K wins over C
        pattern = tag_pattern(row["tag"])
        if pattern is None:
            continue  # private attributes: options.safe_private decides
        group, element, gmask, emask = pattern
        if gmask == emask == 0xFFFF:
            exact[group << 16 | element] = action
        else:
            option_masked.append((group, element, gmask, emask, action))
    exact[_PATIENT_ID_TAG] = _PATIENT_ID
    if options.retain_patient_characteristics:
        exact[_AGE_TAG] = _AGE  # kept, but capped at 90
    masked = option_masked + masked  # the options' verdicts first: the first match wins
    return _Rules(exact=exact, masked=tuple(masked),
                  masked_groups=frozenset(r[0] & r[2] for r in masked),
                  safe_private=options.safe_private if options.retain_safe_private else frozenset(),
                  cleans=any(r[4] == _CLEAN for r in masked) or _CLEAN in exact.values(),
                  basic=_rules(DeidOptions()) if columns else None)


# --- Applying the rules ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Context:
    key: bytes
    rules: _Rules
    shift_days: int
    patient: str
    identifying: re.Pattern[str] | None  # the instance's identifying values (for C on text)


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
    """D's value for a VR other than SQ and UI: non-empty and valid for the VR."""
    if vr in _NUMERIC_VRS:
        return 0
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


def _identifying(ds: Dataset, rules: _Rules) -> re.Pattern[str] | None:
    """A pattern of the words of ``ds``'s identifying values: the text elements the profile
    removes, empties, replaces or pseudonymises (names, IDs, addresses, ...), top level only."""
    words: set[str] = set()
    with silenced_warnings():
        for elem in ds:
            action = rules.action(int(elem.tag))
            if elem.tag.is_private or action in (None, _KEEP, _CLEAN, _UID, _SEQ_UIDS, _AGE):
                continue
            if elem.VR not in _TEXT_VRS or elem.VR == "CS":
                continue
            values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            for value in values:
                words.update(w for w in _TOKEN_SPLIT.split(str(value or "")) if len(w) >= _MIN_TOKEN)
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _scrub(text: str, ctx: _Context) -> str:
    """C on a text value: the instance's identifying words and every date, long number, phone
    number, e-mail and URL taken out, spaces squeezed."""
    text = _PHI_PATTERNS.sub(" ", text)
    if ctx.identifying is not None:
        text = ctx.identifying.sub(" ", text)
    return " ".join(text.split())


def _cleaned(ds: Dataset, tag: Any, vr: str, raw: DataElement | RawDataElement, ctx: _Context) -> Any:
    """C: the value of ``tag`` cleaned for its VR; None when the element is kept as it is (a
    sequence cleaned item by item, a time) and ``...`` when it cannot be cleaned (binary and
    numeric values: their content cannot be checked here)."""
    if vr == "SQ":
        for item in ds[tag].value:
            _apply(item, ctx)
        return None
    if vr in ("DA", "DT"):
        return _shifted(raw, vr, ctx.shift_days)
    if vr == "TM":
        return None  # a time of day: the day moved, not the hour
    if vr == "UI":
        return _uids(raw, ctx)
    if vr == "AE":  # a device's name: the same device gets the same name, which says nothing
        return "AE" + pseudonym(ctx.key, str(ds[tag].value or "").strip(), kind="ae")[:14]
    if vr in _TEXT_VRS:
        value = ds[tag].value
        if isinstance(value, (list, MultiValue)):
            return [_scrub(str(v), ctx) for v in value]
        return _scrub(str(value or ""), ctx)
    return ...


def _dummy_sequence(elem: DataElement, ctx: _Context) -> None:
    """D on a sequence: every nested value replaced by a dummy of its VR, UIDs remapped."""
    for item in elem.value:
        for nested in item:
            if nested.VR == "SQ":
                _dummy_sequence(nested, ctx)
            else:
                nested.value = _uids(nested, ctx) if nested.VR == "UI" else _dummy_value(nested.VR)


def _private(ds: Dataset, tags: list[Any], safe: frozenset[tuple[str, int, int]]) -> None:
    """Remove the private elements of ``ds`` (odd groups, creators included) but those of
    ``safe``, (creator, group, element byte), and the creators of those kept (PS3.5 7.8.1)."""
    creators: dict[tuple[int, int], str] = {}
    if safe:
        for tag in tags:
            number = int(tag)
            if number & 0x10000 and 0x10 <= number & 0xFFFF <= 0xFF:
                creators[(number >> 16, number & 0xFF)] = str(ds[tag].value or "").strip()
    kept_blocks = set()
    for tag in tags:
        number = int(tag)
        if not number & 0x10000:
            continue
        group, element = number >> 16, number & 0xFFFF
        if element >= 0x1000:
            block = element >> 8
            creator = creators.get((group, block))
            if creator is not None and (creator, group, element & 0xFF) in safe:
                kept_blocks.add((group, block))
                continue
        if element > 0xFF or not safe:
            del ds[tag]
    for tag in tags:
        number = int(tag)
        if number & 0x10000 and 0x10 <= number & 0xFFFF <= 0xFF and tag in ds:
            if (number >> 16, number & 0xFF) not in kept_blocks:
                del ds[tag]


_DONE = object()  # _action_value: the element was removed or changed in place


def _action_value(ds: Dataset, tag: Any, vr: str, raw: DataElement | RawDataElement, action: int | None,
                  ctx: _Context) -> Any:
    """The new value of an element under a Basic Profile ``action`` (or ``_DONE``)."""
    if action is None or action == _KEEP:
        if vr == "SQ":
            for item in ds[tag].value:
                _apply(item, ctx)
        return _DONE
    if action == _REMOVE:
        del ds[tag]
        return _DONE
    if action == _EMPTY or (action == _UID and vr != "UI") or (action == _SHIFT and vr not in ("DA", "DT")):
        return _empty_value(vr)
    if action == _DUMMY:
        if vr == "SQ":
            _dummy_sequence(ds[tag], ctx)
            return _DONE
        return _uids(raw, ctx) if vr == "UI" else _dummy_value(vr)
    if action == _UID:
        return _uids(raw, ctx)
    if action == _SEQ_UIDS:
        if vr == "SQ":
            for item in ds[tag].value:
                _apply(item, ctx)
            return _DONE
        return _uids(raw, ctx) if vr == "UI" else _empty_value(vr)
    if action == _SHIFT:
        return _shifted(raw, vr, ctx.shift_days)
    if action == _PATIENT_ID:
        return ctx.patient
    return _capped_age(ds[tag].value or "")  # _AGE


def _apply(ds: Dataset, ctx: _Context) -> None:
    """Apply the compiled rules to every element of ``ds``, recursing into kept sequences.

    Elements are read raw (``get_item``) and replaced by new elements, so that values which are
    kept or thrown away are never decoded or validated.
    """
    rules = ctx.rules
    tags = list(ds.keys())
    _private(ds, tags, rules.safe_private)
    for tag in tags:
        number = int(tag)  # BaseTag compares in Python; plain ints hash and compare in C
        if number & 0x10000:  # private: _private kept only the safe ones
            continue
        action = rules.action(number)
        raw = ds.get_item(tag)
        vr = raw.VR or _vr_of(number)
        if vr == _UN:
            raw = ds[tag]  # pydicom decodes UN of a known tag under its dictionary VR
            vr = raw.VR
            if vr == _UN and action in (None, _KEEP):
                del ds[tag]  # an unknown element of a standard group: content cannot be checked
                continue
        if action == _CLEAN:
            value = _cleaned(ds, tag, vr, raw, ctx)
            if value is not ...:
                if value is not None:
                    ds[tag] = _element(tag, vr, value)
                continue
            # cannot be cleaned: the Basic Profile's action
            action = rules.basic.action(number) if rules.basic is not None else _REMOVE
        value = _action_value(ds, tag, vr, raw, action, ctx)
        if value is not _DONE:
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


def _mark(ds: Dataset, options: DeidOptions, pixels_cleaned: bool) -> None:
    """Record what was done (PS3.15 E.1.1): identity removed, method text and CID 7050 codes."""
    items = []
    for name in applied_codes(options, pixels_cleaned=pixels_cleaned):
        value, meaning = PROFILE_CODES[name]
        item = Dataset()
        item[0x00080100] = _element(0x00080100, "SH", value)  # CodeValue
        item[0x00080102] = _element(0x00080102, "SH", "DCM")  # CodingSchemeDesignator
        item[0x00080104] = _element(0x00080104, "LO", meaning)  # CodeMeaning
        items.append(item)
    temporal = ("MODIFIED" if options.retain_dates else
                "UNMODIFIED" if options.retain_full_dates else "REMOVED")
    method = method_description(options, pixels_cleaned=pixels_cleaned)
    for tag, vr, value in (
        (0x00120062, "CS", "YES"),  # PatientIdentityRemoved
        (0x00120063, "LO", method),  # DeidentificationMethod
        (0x00120064, "SQ", Sequence(items)),  # DeidentificationMethodCodeSequence
        (0x00280303, "CS", temporal),  # LongitudinalTemporalInformationModified
        *([(0x00280301, "CS", "NO")] if pixels_cleaned else []),  # BurnedInAnnotation
    ):
        ds[tag] = _element(tag, vr, value)


def deidentify(ds: Dataset, key: bytes, options: DeidOptions = DeidOptions(), *,
               pixels_cleaned: bool = False) -> Dataset:
    """De-identify ``ds`` in place (its file meta too) and return it.

    ``pixels_cleaned``: the caller ran Clean Pixel Data on the image (:mod:`medray.privacy.pixels`):
    the output then declares it (CID 7050 113101, BurnedInAnnotation NO).

    Raises DicomError (reasons ``burned_in_annotation``, ``cannot_deidentify``,
    ``missing_patient_id``, ``deid_failed``); ``ds`` is unchanged for the first three, and must
    be discarded after ``deid_failed``. Messages quote tag numbers at most, never values.
    """
    # pydicom warns about malformed values by quoting them, which may be PHI.
    with silenced_warnings():
        mrn = check_deidentifiable(ds)
        rules = _rules(options)
        try:
            identifying = _identifying(ds, rules) if rules.cleans else None
            ctx = _Context(key=key, rules=rules, shift_days=date_shift_days(key, mrn),
                           patient=pseudonym(key, mrn, kind="patient"), identifying=identifying)
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
    _mark(ds, options, pixels_cleaned)
    return ds
