"""A fast look at a DICOM file's first kilobytes for its study and series UIDs (the scan's hot path).

Grouping every file of an export into series only needs two top-level elements, which sit near
the start of the file. Parsing the header with pydicom costs more than the rest of the scan; this
reads the first 64 KiB and walks the top-level elements of the one encoding almost every archive
writes (Explicit VR Little Endian), skipping values by their lengths, so nested sequence items
can never be mistaken for top-level UIDs. Anything else (another transfer syntax, an element of
undefined length before the UIDs, a header longer than the bytes read, any inconsistency) returns
None, and the caller falls back to pydicom. The series step re-checks every instance's UIDs
after a full parse, so a wrong answer here cannot put a file in the wrong series unnoticed.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["sniff_series"]

_HEAD_BYTES = 64 * 1024
_PREAMBLE = 128
_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_TRANSFER_SYNTAX = 0x00020010
_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E
_UNDEFINED = 0xFFFFFFFF
# VRs whose length field is 4 bytes, after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_HEADER = struct.Struct("<HH2s")
_SHORT = struct.Struct("<H")
_LONG = struct.Struct("<I")


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip(" \0")


def _walk(head: bytes, pos: int, last_tag: int) -> dict[int, bytes] | None:
    """Top-level values up to ``last_tag`` (inclusive) from ``pos``; None when it cannot tell."""
    values: dict[int, bytes] = {}
    end = len(head)
    while pos + 8 <= end:
        group, element, vr = _HEADER.unpack_from(head, pos)
        tag = group << 16 | element
        if vr in _LONG_VRS:
            if pos + 12 > end:
                return None
            (length,) = _LONG.unpack_from(head, pos + 8)
            pos += 12
        else:
            (length,) = _SHORT.unpack_from(head, pos + 6)
            pos += 8
        if length == _UNDEFINED or pos + length > end:
            return None  # a sequence of undefined length, or a value past what was read
        values[tag] = head[pos:pos + length]
        pos += length
        if tag >= last_tag:
            return values
    return None


def sniff_series(path: Path) -> tuple[str, str] | None:
    """(StudyInstanceUID, SeriesInstanceUID) of an Explicit VR Little Endian file, or None.

    None means "not sure": the caller must then parse the file with pydicom.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return None
    if head[_PREAMBLE:_PREAMBLE + 4] != b"DICM":
        return None
    meta = _walk(head, _PREAMBLE + 4, _TRANSFER_SYNTAX)
    if meta is None or _text(meta.get(_TRANSFER_SYNTAX, b"")) != _EXPLICIT_VR_LE:
        return None
    group_length = meta.get(0x00020000)
    if group_length is None or len(group_length) != 4:
        return None
    start = _PREAMBLE + 4 + 12 + _LONG.unpack(group_length)[0]  # (0002,0000) is 12 bytes long
    values = _walk(head, start, _SERIES_UID)
    if values is None:
        return None
    study, series = _text(values.get(_STUDY_UID, b"")), _text(values.get(_SERIES_UID, b""))
    return (study, series) if study and series else None
