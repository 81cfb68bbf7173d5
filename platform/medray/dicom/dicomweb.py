"""DICOMweb answers (DICOM PS3.18): the STOW-RS response of a service that takes instances over HTTP.

:func:`stow_response` builds the Store Instances Response Module (PS3.18 §10.5.3, Table
10.5.3-1: Referenced SOP Sequence, Failed SOP Sequence with a Failure Reason per instance) in the
DICOM JSON model (PS3.18 Annex F) for ``application/dicom+json``; :func:`stow_status` the HTTP
status that goes with it (200 all processed, 202 some failed, 409 none). :func:`instance_refs` reads
the (SOP Class UID, SOP Instance UID) pairs of posted instances.

:func:`pull_series` is the client side toward an archive: a QIDO-RS series search (PS3.18 §10.6)
and a WADO-RS retrieve (§10.4) of each series found, written as the archive sends them (byte for
byte) into numbered folders, one per series, that medray's folder readers take.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from pydicom.dataset import Dataset

from medray.dicom.multipart import DICOM, MULTIPART, split_body
from medray.dicom.quiet import silenced_warnings
from medray.errors import DicomError

__all__ = ["DICOM_JSON", "instance_refs", "pull_series", "stow_response", "stow_status"]

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


def _uid(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def pull_series(base_url: str, out_dir: str | Path, *, filters: Mapping[str, str],
                headers: Mapping[str, str] | None = None, limit: int = 1000,
                timeout_s: float = 60.0) -> list[Path]:
    """Series of the DICOMweb archive at ``base_url`` matching ``filters`` (QIDO-RS attribute
    matching, e.g. ``{"Modality": "CT", "StudyDate": "20260101-20261231"}``), each retrieved by
    WADO-RS into ``out_dir/series_NNNN/NNNN.dcm``; returns the series folders.

    Files are numbered, never named by UID (UIDs are PHI); their bytes are the archive's. Raises
    DicomError ``archive_unavailable`` with the HTTP status when the archive refuses a request.
    """
    out = Path(out_dir)
    folders = []
    with httpx.Client(base_url=base_url.rstrip("/"), headers=dict(headers or {}), timeout=timeout_s) as client:
        found = _get(client, "/series", params={**filters, "limit": str(limit)}, accept=DICOM_JSON)
        for n, item in enumerate(found.json() if found.content else []):
            study, series = _uid(item, "0020000D"), _uid(item, "0020000E")
            r = _get(client, f"/studies/{study}/series/{series}", accept=f'{MULTIPART}; type="{DICOM}"')
            folder = out / f"series_{n:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(split_body(r.headers.get("content-type"), r.content)):
                (folder / f"{i:04d}.dcm").write_bytes(data)
            folders.append(folder)
    return folders


def _get(client: httpx.Client, path: str, *, accept: str, params: Mapping[str, str] | None = None) -> httpx.Response:
    r = client.get(path, params=params, headers={"Accept": accept})
    if r.status_code not in (200, 204):
        # The path holds UIDs: only the kind of request and the status are said.
        kind = "QIDO-RS search" if path == "/series" else "WADO-RS retrieve"
        raise DicomError("archive_unavailable", f"the archive answered {r.status_code} to a {kind}: check the URL and access")
    return r
