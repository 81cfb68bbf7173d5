"""DICOM value parsing shared by de-identification and the pipeline: ages (AS) and dates (DA, DT).

The formats are those of PS3.5 Table 6.2-1. Parsers return None for a value they cannot read, so
that callers decide what a malformed value becomes (emptied, left out); none raises.
"""

from __future__ import annotations

import re
from datetime import date

__all__ = ["parse_age", "parse_date"]

# AS: "nnnD", "nnnW", "nnnM" or "nnnY", always 4 characters.
_AGE = re.compile(r"(\d{3})([DWMY])")
# A full date (DA), or a date-time (DT) with optional time, fraction and UTC offset: no ranges.
_DATE = {"DA": re.compile(r"(\d{4})(\d{2})(\d{2})"),
         "DT": re.compile(r"(\d{4})(\d{2})(\d{2})(?:\d{2}){0,3}(?:\.\d{1,6})?(?:[+-]\d{4})?")}


def parse_age(text: str) -> tuple[int, str] | None:
    """An Age String (AS) as (number, unit "D", "W", "M" or "Y"); padding spaces are ignored."""
    m = _AGE.fullmatch(text.strip())
    return None if m is None else (int(m[1]), m[2])


def parse_date(text: str, vr: str = "DA") -> date | None:
    """The calendar date of a DA value, or of a DT value's date part (``vr="DT"``); None for a
    partial date, a range or a day that does not exist."""
    m = _DATE[vr].fullmatch(text)
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None
