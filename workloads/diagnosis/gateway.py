"""The DICOM gateway of the diagnosis service: C-STORE in, the finding back into the PACS as an SR.

A modality or PACS sends a series by C-STORE to one of the gateway's AE titles; the AE title
picks the lane (``routes``, e.g. ``MEDRAY`` -> routine, ``MEDRAY_ER`` -> emergency), and the
service picks the expert from the series' Modality/BodyPartExamined as for any HTTP request. Once
no instance of a series arrived for ``quiet_s`` seconds (:class:`medray.dicom.net.SeriesCollector`)
the gateway POSTs the series to the lane's ``/v1/diagnose`` as a STOW-RS style body with its own
bearer token (so the service authenticates, bounds and audits it like any client), then builds a
Comprehensive 3D SR of the answer (:func:`medray.dicom.sr.finding_report`: referencing the source
series, the model as algorithm) and C-STOREs it to the ``archive`` (the PACS the viewers read).

It runs as one Ray actor (:func:`start_gateway`) on an ``infer`` node (the coordinator as
fallback), not as a Serve deployment: a DICOM listener needs one fixed port that modalities are
configured with, while Serve replicas come and go and share no port. Instances wait in the
actor's memory until their series is diagnosed: a gateway that dies loses the series in flight
(the sender was answered "success"); send it again.

Bad input gets a DICOM status, never a crash (:data:`medray.dicom.net.STATUS`): an unknown called
AE title is rejected at association, an instance that cannot be decoded gets 0xC000, one that
lacks its UIDs, its pixel data or exceeds ``max_instance_pixels`` 0xA900, a full gateway 0xA700.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydicom.uid import generate_uid

from medray.broker.lanes import lane_url
from medray.dicom.multipart import encode_series
from medray.dicom.net import Received, SeriesCollector, StoreSCP, store_instances
from medray.dicom.sr import Concept, FindingResult, finding_report
from medray.dicom.volume import read_instance
from medray.errors import ConfigError
from medray.logs import get_logger
from medray.models.findings import finding_spec
from medray.scheduling.options import place
from medray.scheduling.placement import WorkloadProfile
from workloads.diagnosis.config import LANES

__all__ = ["Archive", "GatewayConfig", "DicomGateway", "start_gateway", "sr_result"]

log = get_logger("diagnosis.gateway")
_AE_TITLE = r"^[ -~]{1,16}$"  # PS3.5 AE VR: up to 16 characters of the default repertoire


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Archive(_Strict):
    """The PACS the SRs go to, by C-STORE."""

    host: str
    port: int = Field(ge=1, le=65535)
    aet: str = Field(pattern=_AE_TITLE, description="the archive's AE title (called AE of the C-STORE)")


class GatewayConfig(_Strict):
    """The gateway's settings: its AE titles and lanes, its port, the service and the archive."""

    routes: dict[str, str] = Field(description="called AE title -> lane (routine or emergency)")
    service_url: str = Field(description="base URL of the diagnosis service, e.g. http://127.0.0.1:8000")
    token_file: str = Field(description="file holding the gateway's bearer token (scopes clinic and emergency)")
    host: str = Field("0.0.0.0", description="address the C-STORE SCP listens on")
    port: int = Field(11112, ge=0, le=65535, description="its port (11112: DICOM's registered port; 0: a free one)")
    quiet_s: float = Field(2.0, gt=0, description="a series is complete after this long without a new instance")
    max_instance_pixels: int = Field(4096 * 4096, ge=1, description="pixels one instance may declare (else 0xA900)")
    max_series_instances: int = Field(2000, ge=1, description="instances of one series (else 0xA700)")
    max_series: int = Field(64, ge=1, description="series waiting at once (else 0xA700)")
    archive: Archive | None = Field(None, description="where the SRs go; none: findings are not written back")
    calling_aet: str = Field("MEDRAY", pattern=_AE_TITLE, description="the gateway's AE title toward the archive")
    timeout_s: float = Field(120, gt=0, description="HTTP timeout of one diagnosis")
    workers: int = Field(4, ge=1, description="series diagnosed at once")

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: dict[str, str]) -> dict[str, str]:
        if not routes:
            raise ValueError("routes: name at least one AE title, e.g. {'MEDRAY': 'routine'}")
        for aet, lane in routes.items():
            if not re.match(_AE_TITLE, aet) or aet != aet.strip():
                raise ValueError(f"AE title {aet!r}: 1 to 16 printable characters, no leading or trailing space")
            if lane not in LANES:
                raise ValueError(f"AE title {aet!r} routes to unknown lane {lane!r}: use one of {list(LANES)}")
        return routes


def sr_result(answer: dict[str, Any]) -> FindingResult:
    """The SR content of one answer of ``POST /v1/diagnose`` (its JSON:
    :class:`~workloads.diagnosis.api.DiagnoseResponse`)."""
    finding = answer["finding"]
    spec = finding_spec(finding["name"])
    name, _, version = answer["model"].partition(":")
    site, study = spec.body_site, spec.study
    return FindingResult(finding=Concept("I10C", *spec.code), present=finding["label"] == spec.positive,
                         probability=float(finding["probability"]), body_site=Concept("SCT", *site),
                         procedure=Concept("LN", *study), model_name=name, model_version=version)


def _read_token(path: str) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise ConfigError(f"the gateway's token file {path} cannot be read ({type(e).__name__}): create it with "
                          "`medray token create --name dicom-gateway --scope clinic --scope emergency`") from None
    if not token:
        raise ConfigError(f"the gateway's token file {path} is empty: put the token `medray token create` printed in it")
    return token


class DicomGateway:
    """The gateway's state: the SCP, the collector, the diagnosis workers and the last outcomes (PHI-free).

    A plain class (tests and :func:`start_gateway`'s actor use the same); see the module docstring.
    """

    def __init__(self, config: GatewayConfig | dict[str, Any]) -> None:
        self.config = config if isinstance(config, GatewayConfig) else GatewayConfig.model_validate(config)
        self._token = _read_token(self.config.token_file)
        self._http = httpx.Client(base_url=self.config.service_url, timeout=self.config.timeout_s)
        self._device_uid = generate_uid()
        self._outcomes: deque[dict[str, Any]] = deque(maxlen=1000)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="gateway-diagnose")
        # Stamped when the quiet period ends, before any wait for a worker.
        self._collector = SeriesCollector(lambda instances: self._pool.submit(self._diagnose, instances, time.time()),
                                          quiet_s=self.config.quiet_s, max_instances=self.config.max_series_instances,
                                          max_series=self.config.max_series)
        self._scp = StoreSCP(self.config.routes, self._receive, host=self.config.host, port=self.config.port)

    def address(self) -> tuple[str, int]:
        """(host, port) the SCP listens on."""
        return str(self._scp.host), int(self._scp.port)

    def outcomes(self) -> list[dict[str, Any]]:
        """One record per series handed on, oldest first: lane, instances, HTTP status, reason or
        finding, model, the pseudonymous study_ref, the SR's C-STORE status and UID, timings
        (``completed_at``: the quiet period ended; ``done_at``: diagnosed and the SR stored)."""
        with self._lock:
            return list(self._outcomes)

    def waiting(self) -> int:
        """Series received and not yet handed to the service."""
        return self._collector.waiting()

    def _receive(self, instance: Received) -> None:
        # Checked now, so the sender hears of a bad instance (DicomError -> a C-STORE status).
        read_instance(instance.data, max_pixels=self.config.max_instance_pixels)
        self._collector.add(instance)

    def _diagnose(self, instances: list[Received], completed_at: float) -> None:
        lane = self.config.routes[instances[0].called_aet]
        outcome: dict[str, Any] = {"lane": lane, "instances": len(instances), "completed_at": completed_at}
        body, content_type = encode_series([i.data for i in instances])
        started = time.perf_counter()
        try:
            r = self._http.post(lane_url(lane, "/v1/diagnose"), content=body,
                                headers={"Content-Type": content_type, "Authorization": f"Bearer {self._token}"})
            outcome.update(status=r.status_code, diagnose_ms=round((time.perf_counter() - started) * 1e3, 1))
            answer = r.json()
            if r.status_code != 200:
                outcome["reason"] = answer.get("error")  # a stable code: never the detail, which may quote input
            else:
                outcome.update(study_ref=answer["study"]["study_ref"], model=answer["model"],
                               finding=answer["finding"]["label"], request_id=answer["request_id"])
                if self.config.archive is not None:
                    outcome.update(self._write_back([i.header for i in instances], answer))
        except Exception as e:
            outcome.setdefault("status", None)
            outcome["reason"] = type(e).__name__
        outcome["done_at"] = time.time()
        log.info("series on lane %s: %s instances, status %s, %s", lane, len(instances), outcome.get("status"),
                 outcome.get("finding") or outcome.get("reason"))
        with self._lock:
            self._outcomes.append(outcome)

    def _write_back(self, headers: list[Any], answer: dict[str, Any]) -> dict[str, Any]:
        archive = self.config.archive
        assert archive is not None
        started = time.perf_counter()
        sr = finding_report(headers, sr_result(answer), series_instance_uid=generate_uid(),
                            sop_instance_uid=generate_uid(), device_uid=self._device_uid)
        (status,) = store_instances([sr], host=archive.host, port=archive.port, called_aet=archive.aet,
                                    calling_aet=self.config.calling_aet)
        return {"sr_uid": str(sr.SOPInstanceUID), "sr_status": status,
                "sr_ms": round((time.perf_counter() - started) * 1e3, 1)}

    def stop(self) -> None:
        """Stop receiving, then finish the series already handed on."""
        self._scp.stop()
        self._collector.stop()
        self._pool.shutdown(wait=True)
        self._http.close()


def start_gateway(config: GatewayConfig | dict[str, Any], *, name: str = "medray-dicom-gateway",
                  num_cpus: float = 0.5, timeout_s: float = 120.0) -> Any:
    """Start the gateway as a named Ray actor on an ``infer`` node (the coordinator as fallback) of the
    connected cluster; returns its handle once it listens (``ray.get(handle.address.remote())``).

    Stop it with ``ray.get(handle.stop.remote())`` then ``ray.kill(handle)``. ConfigError when it
    does not listen within ``timeout_s`` (no node of those roles with ``num_cpus`` free, or its
    port taken: the actor's error says which).
    """
    import ray

    config = config if isinstance(config, GatewayConfig) else GatewayConfig.model_validate(config)
    profile = WorkloadProfile(roles=("infer", "coordinator"), num_cpus=num_cpus, latency="realtime")
    options = place(profile).ray_options()
    # The listener and the diagnosis workers are threads: the actor's methods must run beside them.
    actor = ray.remote(DicomGateway).options(name=name, max_concurrency=8, **options).remote(config)
    try:
        ray.get(actor.address.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.kill(actor)
        raise ConfigError(f"the DICOM gateway was not placed within {timeout_s:.0f} s: no infer or coordinator "
                          f"node has {num_cpus} CPUs free (`medray status`)") from None
    return actor
