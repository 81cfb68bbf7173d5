"""A fast look at a DICOM file's first kilobytes for its study and series UIDs (the scan's hot path).

Grouping every file of an export into series only needs two top-level elements, which sit near
the start of the file. Parsing the header with pydicom costs more than the rest of the scan; this
reads the first 64 KiB and walks the top-level elements of the one encoding almost every archive
writes (Explicit VR Little Endian) with :func:`medray.dicom_parse.walk`, stepping over values by
their lengths (sequences of undefined length through pydicom's sequence reader), so nested
sequence items can never be mistaken for top-level UIDs. Anything else (another transfer syntax,
a header longer than the bytes read, any inconsistency) returns None, and the caller falls back
to pydicom. The series step re-checks every instance's UIDs
after a full parse, so a wrong answer here cannot put a file in the wrong series unnoticed.
"""

from __future__ import annotations

from pathlib import Path

from medray.dicom_parse import EXPLICIT_VR_LITTLE_ENDIAN, text, walk

__all__ = ["sniff_series"]

_HEAD_BYTES = 64 * 1024
_PREAMBLE = 128
_TRANSFER_SYNTAX = 0x00020010
_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E


def _values(head: bytes, pos: int, last_tag: int) -> dict[int, bytes] | None:
    """Top-level raw values from ``pos`` up to ``last_tag`` (inclusive); None when unsure."""
    walked = walk(head, pos, last_tag=last_tag)
    if walked is None:
        return None
    return {tag: getattr(elem, "value", b"") for tag, elem in walked[0].items()}


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
    meta = _values(head, _PREAMBLE + 4, _TRANSFER_SYNTAX)
    if meta is None or text(meta.get(_TRANSFER_SYNTAX)) != EXPLICIT_VR_LITTLE_ENDIAN:
        return None
    group_length = meta.get(0x00020000)
    if not isinstance(group_length, bytes) or len(group_length) != 4:
        return None
    start = _PREAMBLE + 4 + 12 + int.from_bytes(group_length, "little")  # (0002,0000) is 12 bytes long
    values = _values(head, start, _SERIES_UID)
    if values is None:
        return None
    study, series = text(values.get(_STUDY_UID)), text(values.get(_SERIES_UID))
    return (study, series) if study and series else None
