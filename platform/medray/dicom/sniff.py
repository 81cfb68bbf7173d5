"""A fast look at a DICOM file's first kilobytes for its study and series UIDs (the scan's hot path).

Grouping every file of an export into series only needs two top-level elements, which sit near
the start of the file. Parsing the header with pydicom costs more than the rest of the scan; this
reads the first 64 KiB and walks the top-level elements of the one encoding almost every archive
writes (Explicit VR Little Endian) with :func:`medray.dicom.part10.walk`, stepping over values by
their lengths (sequences of undefined length through pydicom's sequence reader), so nested
sequence items can never be mistaken for top-level UIDs. Anything else (another transfer syntax,
a header longer than the bytes read, any inconsistency) returns None, and the caller falls back
to pydicom. The series step re-checks every instance's UIDs
after a full parse, so a wrong answer here cannot put a file in the wrong series unnoticed.
"""

from __future__ import annotations

from pathlib import Path

from medray.dicom.part10 import read_meta, text, walk

__all__ = ["sniff_series"]

_HEAD_BYTES = 64 * 1024
_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E


def sniff_series(path: Path) -> tuple[str, str] | None:
    """(StudyInstanceUID, SeriesInstanceUID) of an Explicit VR Little Endian file, or None.

    None means "not sure": the caller must then parse the file with pydicom.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return None
    meta = read_meta(head)
    walked = walk(head, meta[1], last_tag=_SERIES_UID) if meta is not None else None
    if walked is None:
        return None
    values = walked[0]
    study, series = (text(getattr(values.get(tag), "value", b"")) for tag in (_STUDY_UID, _SERIES_UID))
    return (study, series) if study and series else None
