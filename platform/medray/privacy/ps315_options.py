"""The options of DICOM PS3.15 Annex E's confidentiality profile: which there are, their column of
Table E.1-1, their CID 7050 codes, and the table's option columns themselves.

:class:`DeidOptions` says which options :func:`medray.privacy.ps315.deidentify` applies (PS3.15
E.3; what each does: below). :data:`PROFILE_CODES` are the CID 7050 "De-identification Method"
codes of pydicom's DCM code dictionary (``pydicom.sr.codedict``). :func:`options_table` reads
``table_e1_1.json`` beside this module: PS3.15 Table E.1-1 with its option columns, which the
dicom-anonymizer package (the Basic Profile's source) does not ship, as extracted from the
standard by innolitics/dicom-standard (the file records its source and commit).

Each option changes exactly the attributes its column of Table E.1-1 names, K meaning kept and C
cleaned; where two options chosen name one attribute, K wins. Attributes newer than the options
table (34 of dicom-anonymizer's 2026c edition) get the Basic Profile's action under every option.

* **Retain Safe Private** (``retain_safe_private``): the private attributes listed in
  ``safe_private`` as (private creator, group, element byte) are kept, with their creator; the
  site vouches for that list (PS3.15 E.3.10 and Table E.3.10-1 give examples). Every other
  private attribute is removed, as always.
* **Retain UIDs** (``retain_uids``), **Retain Device Identity** (``retain_device_identity``),
  **Retain Institution Identity** (``retain_institution_identity``): their K attributes kept;
  the device option's C attributes (AE titles) become a keyed pseudonym of their value.
* **Retain Patient Characteristics** (``retain_patient_characteristics``): sex, age, size,
  weight, ethnic group, smoking and pregnancy status kept, ages over 89 as ``090Y`` (HIPAA Safe
  Harbor's "90 or older"); its C attributes (allergies, pre-medication, ...) cleaned as text.
* **Retain Longitudinal Temporal Information**: with full dates (``retain_full_dates``) every
  date and time of the column is kept; with modified dates (``retain_dates``) every date (DA) and
  date-time (DT) of the column is shifted by ``date_shift_days(key, mrn)`` days, the offset the
  EMR pipeline uses, and times are kept. Patient's Birth Date is in neither column: emptied.
* **Clean Descriptors** (``clean_descriptors``), **Clean Structured Content**
  (``clean_structured_content``), **Clean Graphics** (``clean_graphics``): C on text keeps the
  value less every word of the instance's identifying values (the names, IDs and other text the
  profile removes or replaces) and every date, long number, phone number, e-mail and URL; C on a
  sequence keeps it and cleans its items with the same rules. C on a binary value (overlay and
  curve data, maker notes, certified timestamps: their content cannot be checked here) falls back
  to the Basic Profile's action (removed or dummy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources
from typing import Any

from pydicom.sr.codedict import codes

from medray.errors import ConfigError

__all__ = [
    "OPTIONS",
    "OPTIONS_TABLE",
    "PROFILE_CODES",
    "DeidOptions",
    "applied_codes",
    "method_description",
    "options_table",
    "parse_safe_private",
    "tag_pattern",
]

# PS3.15 Table E.1-1 with its option columns (package data beside this module).
OPTIONS_TABLE = "table_e1_1.json"

# Each option: (its column in OPTIONS_TABLE, its CID 7050 code in pydicom's DCM dictionary, the
# short name DeidentificationMethod gives it), in the order of Table E.1-1's columns.
OPTIONS: dict[str, tuple[str, str, str]] = {
    "retain_safe_private": ("rtnSafePrivOpt", "RetainSafePrivateOption", "safe private"),
    "retain_uids": ("rtnUIDsOpt", "RetainUidsOption", "UIDs"),
    "retain_device_identity": ("rtnDevIdOpt", "RetainDeviceIdentityOption", "device"),
    "retain_institution_identity": ("rtnInstIdOpt", "RetainInstitutionIdentityOption", "institution"),
    "retain_patient_characteristics": ("rtnPatCharsOpt", "RetainPatientCharacteristicsOption",
                                       "patient chars"),
    "retain_full_dates": ("rtnLongFullDatesOpt", "RetainLongitudinalTemporalInformationFullDatesOption",
                          "full dates"),
    "retain_dates": ("rtnLongModifDatesOpt", "RetainLongitudinalTemporalInformationModifiedDatesOption",
                     "modified dates"),
    "clean_descriptors": ("cleanDescOpt", "CleanDescriptorsOption", "clean desc"),
    "clean_structured_content": ("cleanStructContOpt", "CleanStructuredContentOption", "clean SC"),
    "clean_graphics": ("cleanGraphOpt", "CleanGraphicsOption", "clean graphics"),
}


def _cid_7050(keyword: str) -> tuple[str, str]:
    code = getattr(codes.DCM, keyword)
    return code.value, code.meaning


# CID 7050 "De-identification Method": (code value, code meaning), coding scheme DCM.
PROFILE_CODES: dict[str, tuple[str, str]] = {
    "basic": _cid_7050("BasicApplicationConfidentialityProfile"),
    "clean_pixel_data": _cid_7050("CleanPixelDataOption"),
    **{name: _cid_7050(keyword) for name, (_, keyword, _) in OPTIONS.items()},
}


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 options apply on top of the Basic Profile (see the module docstring).

    ``safe_private``: with ``retain_safe_private``, the private attributes to keep, as (private
    creator, odd group, element byte) such as ``("GEMS_PARM_01", 0x0043, 0x27)``.
    """

    retain_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_full_dates: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    retain_safe_private: bool = False
    safe_private: frozenset[tuple[str, int, int]] = field(default=frozenset())

    def __post_init__(self) -> None:
        if self.retain_dates and self.retain_full_dates:
            raise ConfigError("retain_dates (modified dates) and retain_full_dates exclude each other: "
                              "choose one Retain Longitudinal Temporal Information option")
        for entry in self.safe_private:
            if not (isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and entry[1] & 1 and isinstance(entry[2], int)
                    and 0 <= entry[2] <= 0xFF):
                raise ConfigError("safe_private entries are (private creator, odd group, element "
                                  "byte 0x00-0xFF), e.g. ('GEMS_PARM_01', 0x0043, 0x27)")
        if self.safe_private and not self.retain_safe_private:
            raise ConfigError("safe_private is used only with retain_safe_private=True: set it")

    def chosen(self) -> list[str]:
        """The options chosen, in the order of Table E.1-1's columns."""
        return [name for name in OPTIONS if getattr(self, name)]

    def to_dict(self) -> dict[str, Any]:
        """Every option (the manifest's record); ``safe_private`` as sorted lists."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["safe_private"] = sorted([list(e) for e in self.safe_private])
        return out


def applied_codes(options: DeidOptions, *, pixels_cleaned: bool = False) -> list[str]:
    """Names (keys of :data:`PROFILE_CODES`) of the profile and the options applied, in order;
    ``pixels_cleaned``: the caller ran Clean Pixel Data (:mod:`medray.privacy.pixels`) too."""
    return ["basic", *(["clean_pixel_data"] if pixels_cleaned else []), *options.chosen()]


@lru_cache(maxsize=1)
def options_table() -> list[dict[str, str]]:
    """PS3.15 Table E.1-1 with its option columns, one dict per attribute: ``tag`` as printed in
    the standard (``(0008,0050)``, ``(60XX,3000)``), ``name``, ``basicProfile`` and each option
    column that names the attribute (``K`` or ``C``)."""
    text = resources.files("medray.privacy").joinpath(OPTIONS_TABLE).read_text(encoding="utf-8")
    table = json.loads(text)
    columns = table["columns"]
    return [{c: v for c, v in zip(columns, row) if v} for row in table["rows"]]


def tag_pattern(tag: str) -> tuple[int, int, int, int] | None:
    """(group, element, group mask, element mask) of a tag as Table E.1-1 prints it; None for the
    private attributes' row ("(GGGG,EEEE) WHERE GGGG IS ODD"), handled on its own."""
    m = re.fullmatch(r"\(([0-9A-FX]{4}),([0-9A-FX]{4})\)", tag)
    if m is None:
        return None
    values, masks = [], []
    for part in m.groups():
        values.append(int(part.replace("X", "0"), 16))
        masks.append(int("".join("0" if c == "X" else "F" for c in part), 16))
    return values[0], values[1], masks[0], masks[1]


def method_description(options: DeidOptions, *, pixels_cleaned: bool = False) -> str:
    """The DeidentificationMethod text (LO, at most 64 characters) for ``options``."""
    chosen = applied_codes(options, pixels_cleaned=pixels_cleaned)[1:]
    names = [OPTIONS[name][2] if name in OPTIONS else "clean pixels" for name in chosen]
    text = "medray " + "; ".join(["PS3.15 E basic", *names])
    if len(text) > 64:  # many options: their CID 7050 codes' last digits instead
        text = "medray PS3.15 E basic + 1131" + ",".join(PROFILE_CODES[n][0][4:] for n in chosen)
    return text


def parse_safe_private(entries: Iterable[str]) -> frozenset[tuple[str, int, int]]:
    """``"GGGG,EE,CREATOR"`` texts (hex group and element byte, the private creator) as
    :attr:`DeidOptions.safe_private`; ConfigError for a malformed one."""
    safe = set()
    for entry in entries:
        parts = entry.split(",", 2)
        try:
            safe.add((parts[2].strip(), int(parts[0], 16), int(parts[1], 16)))
        except (IndexError, ValueError):
            raise ConfigError(f"a safe private attribute is GGGG,EE,CREATOR (hex group and element "
                              f"byte), e.g. 0043,27,GEMS_PARM_01; got {entry!r}") from None
    return frozenset(safe)
