"""The hospital round trip, once, for the demo: a private Orthanc, the DICOM gateway, one series by C-STORE.

:func:`pacs_round_trip` starts Orthanc (medray.dicom.orthanc) and the gateway (a Ray actor in front
of a running diagnosis service), C-STOREs one series to the gateway's routine AE title, waits for
its SR to be found in Orthanc by QIDO-RS, stops both and returns a PHI-free summary.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pydicom

from medray.dicom.net import store_instances
from medray.dicom.orthanc import start_orthanc
from workloads.diagnosis.gateway import start_gateway

__all__ = ["pacs_round_trip"]


def _sr_found(dicomweb_url: str, study_uid: str, deadline: float) -> bool:
    with httpx.Client(base_url=dicomweb_url, timeout=10) as client:
        while time.monotonic() < deadline:
            r = client.get(f"/studies/{study_uid}/instances", params={"Modality": "SR"},
                           headers={"Accept": "application/dicom+json"})
            if r.status_code == 200 and r.content and r.json():
                return True
            time.sleep(0.1)
    return False


def pacs_round_trip(service_url: str, token_file: Path, series: Sequence[bytes], folder: Path, *,
                    quiet_s: float = 1.0, timeout_s: float = 120.0) -> dict[str, Any]:
    """C-STORE ``series`` through a gateway in front of ``service_url`` into a private Orthanc under
    ``folder``; returns {instances, stored (all 0x0000), status, finding, model, sr_found, seconds
    from the series' completion to its SR found in Orthanc}."""
    import ray

    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in series]
    pacs = start_orthanc(folder)
    try:
        gateway = start_gateway({
            "routes": {"MEDRAY": "routine"}, "service_url": service_url, "token_file": str(token_file),
            "host": "127.0.0.1", "port": 0, "quiet_s": quiet_s,
            "archive": {"host": "127.0.0.1", "port": pacs.dicom_port, "aet": pacs.aet}},
            # No CPU reserved: a demo's one pass beside replicas that hold the local cluster's CPUs.
            name="demo-dicom-gateway", num_cpus=0)
        try:
            host, port = ray.get(gateway.address.remote())
            statuses = store_instances(datasets, host=host, port=port, called_aet="MEDRAY", calling_aet="DEMO_CT")
            deadline = time.monotonic() + timeout_s
            while not (outcomes := ray.get(gateway.outcomes.remote())) and time.monotonic() < deadline:
                time.sleep(0.1)
            outcome = outcomes[0] if outcomes else {}
            found = bool(outcome.get("sr_uid")) and _sr_found(pacs.dicomweb_url, str(datasets[0].StudyInstanceUID),
                                                             deadline)
            seconds = time.time() - outcome["completed_at"] if found else None
        finally:
            ray.get(gateway.stop.remote())
            ray.kill(gateway)
    finally:
        pacs.stop()
    return {"instances": len(datasets), "stored": all(s == 0 for s in statuses), "status": outcome.get("status"),
            "finding": outcome.get("finding"), "model": outcome.get("model"), "sr_found": found,
            "sr_found_s": None if seconds is None else round(seconds, 2)}
