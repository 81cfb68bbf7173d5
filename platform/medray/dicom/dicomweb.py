"""DICOMweb answers (DICOM PS3.18): the STOW-RS response of a service that takes instances over HTTP.

:func:`stow_response` builds the Store Instances Response Module (PS3.18 §10.5.3, Table
10.5.3-1: Referenced SOP Sequence, Failed SOP Sequence with a Failure Reason per instance) in the
DICOM JSON model (PS3.18 Annex F) for ``application/dicom+json``; :func:`stow_status` the HTTP
status that goes with it (200 all processed, 202 some failed, 409 none). :func:`instance_refs` reads
the (SOP Class UID, SOP Instance UID) pairs of posted instances.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from medray.dicom.quiet import silenced_warnings

__all__ = ["DICOM_JSON", "instance_refs", "stow_response", "stow_status"]

DICOM_JSON = "application/dicom+json"


def instance_refs(instances: Sequence[bytes]) -> list[tuple[str, str]]:
    """(SOPClassUID, SOPInstanceUID) of each Part 10 instance, ``("", "")`` where it cannot be read.

    These are the sender's own UIDs: answer them to the sender only (never log them).
    """
    refs = []
    for data in instances:
        try:
            with silenced_warnings():
                ds = dcmread(io.BytesIO(data), stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID"])
            refs.append((str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")))
        except Exception:
            refs.append(("", ""))
    return refs


def _item(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class or None
    item.ReferencedSOPInstanceUID = sop_uid or None
    return item


def stow_response(processed: Sequence[tuple[str, str]], failed: Sequence[tuple[str, str, int]] = ()) -> dict[str, Any]:
    """The STOW-RS response (DICOM JSON) for instances ``processed`` ((class, uid) pairs) and
    ``failed`` ((class, uid, failure reason): a C-STORE status of PS3.4 Table B.2-1, e.g. 0xA900).

    No Retrieve URL: the instances are diagnosed, not kept (PS3.18 §10.5.3 makes it conditional on
    the instance being retrievable from the origin server).
    """
    ds = Dataset()
    if failed:
        ds.FailedSOPSequence = []
        for sop_class, sop_uid, reason in failed:
            item = _item(sop_class, sop_uid)
            item.FailureReason = int(reason)
            ds.FailedSOPSequence.append(item)
    if processed:
        ds.ReferencedSOPSequence = [_item(sop_class, sop_uid) for sop_class, sop_uid in processed]
    return ds.to_json_dict()


def stow_status(processed: int, failed: int) -> int:
    """HTTP status of a STOW-RS answer (PS3.18 §10.5.3): 200 all instances processed, 202 some
    failed, 409 every one failed."""
    if failed and processed:
        return 202
    return 409 if failed else 200
