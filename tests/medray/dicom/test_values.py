"""Ages (AS) and dates (DA, DT) as PS3.5 Table 6.2-1 writes them. No Ray."""

from __future__ import annotations

from datetime import date

import pytest

from medray.dicom.values import parse_age, parse_date


@pytest.mark.parametrize("text, expected", [
    ("045Y", (45, "Y")), ("090Y", (90, "Y")), ("006M", (6, "M")), ("012W", (12, "W")),
    ("003D", (3, "D")), (" 069Y ", (69, "Y")),
    ("45Y", None), ("0045Y", None), ("045y", None), ("045", None), ("", None), ("04 5Y", None),
    ("²²²Y", None),  # digits int() cannot read are no age either
])
def test_ages(text, expected):
    assert parse_age(text) == expected


@pytest.mark.parametrize("text, vr, expected", [
    ("20200131", "DA", date(2020, 1, 31)),
    ("20200230", "DA", None),  # no such day
    ("202001", "DA", None),  # partial
    ("20200101-20200131", "DA", None),  # a range
    ("2020-01-31", "DA", None),
    ("20200131235959.5+0100", "DT", date(2020, 1, 31)),
    ("2020013123", "DT", date(2020, 1, 31)),
    ("20200131", "DT", date(2020, 1, 31)),
    ("2020", "DT", None),
    ("20200131235959.5+0100", "DA", None),  # a DA has no time
])
def test_dates(text, vr, expected):
    assert parse_date(text, vr) == expected
