"""The HTTP ingresses (FastAPI on Serve), one per lane: authenticate, bound, route, diagnose, audit, answer.

Each lane is its own Serve application with its own ingress replicas, so routine DICOM decoding
never shares a replica, an event loop or a queue with an emergency:

* :class:`DiagnosisAPI` (application ``diagnosis``, ``/``): routine studies, the model routes and
  ``/healthz``. Its replicas diagnose routine studies themselves (no second hop on the hot path)
  and admit at most ``max_ongoing_requests + max_queued_requests`` of them each (503 with
  ``Retry-After`` beyond). A request there that names ``X-Medray-Priority: emergency`` is
  redirected (307) to the emergency ingress, unread.
* :class:`EmergencyAPI` (application ``diagnosis-emergency``, ``/emergency``): emergencies only, on
  replicas reserved for them. Serve queues what exceeds a replica's ``max_ongoing_requests`` in
  front of the replicas (in the proxy's router), up to ``max_queued_requests`` (503 beyond), and
  hands each queued request to whichever replica frees first, replicas that just started included.

Both run the same request path (:class:`_Front`): the expert model is chosen from two header
fields of the first instance (``Modality``/``BodyPartExamined``); a study that waited longer than
its lane's ``queue_timeout_s`` for the model is answered 503 with ``Retry-After``, never left to
time out.

Route scopes: ``POST /v1/diagnose`` needs ``clinic``; ``POST /emergency/v1/diagnose`` needs
``emergency``; ``POST /dicomweb/studies`` and ``POST /emergency/dicomweb/studies`` (STOW-RS: the
same diagnosis, answered with PS3.18's Store Instances Response) need the same scopes;
``GET /v1/models`` needs ``research`` or ``admin``; ``PUT /v1/models/active`` needs ``admin``;
``/healthz`` and the OpenAPI docs are open (they hold no data). Every request to a ``/v1`` or
``/dicomweb`` route, refused or not, appends one audit entry.
"""

# No `from __future__ import annotations` here: FastAPI must see the real annotation objects
# (Request, the body model) through Serve's class-based view.

import asyncio
import time
import uuid
from collections.abc import Collection
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from medray.broker.client import asked_to_step_down, report_queues
from medray.broker.lanes import InFlight, lane_url
from medray.dicom.dicomweb import DICOM_JSON, instance_refs, stow_response, stow_status
from medray.dicom.multipart import DICOM, BodyError, split_body
from medray.dicom.net import failure_status
from medray.dicom.volume import read_instance
from medray.errors import DicomError
from medray.logs import get_logger
from medray.metrics import counter, histogram
from medray.privacy.pseudonym import load_key
from medray.security.audit import AuditError, AuditLog
from medray.security.tokens import AuthError, TokenFile
from workloads.diagnosis.config import (
    LANE_PRIORITIES,
    PRIORITY_HEADER,
    REASON_STATUS,
    DiagnosisArgs,
    expert_key,
)
from workloads.diagnosis.deployments import Engine, catalog_handle
from workloads.diagnosis.fhir import FHIR_JSON, diagnostic_report
from workloads.diagnosis.pipeline import routing_fields

__all__ = ["fastapi_app", "emergency_fastapi_app", "DiagnosisAPI", "EmergencyAPI", "LANE_SCOPES", "route_expert"]

# The token scope each lane's diagnose route needs.
LANE_SCOPES = {"routine": "clinic", "emergency": "emergency"}

log = get_logger("diagnosis")

fastapi_app = FastAPI(
    title="medray diagnosis",
    version="1",
    description=(
        "Real-time findings for DICOM studies. Send one instance (`application/dicom`) or a series "
        "(`multipart/related; type=\"application/dicom\"`, as DICOMweb STOW-RS does) with "
        "`Authorization: Bearer <token>` (scope `clinic`). Emergencies go to `POST /emergency/v1/diagnose` "
        "(scope `emergency`), the reserved lane with its own ingress. "
        "`Accept: application/fhir+json` answers with a FHIR R4 DiagnosticReport. "
        "Identifiers in answers are pseudonyms; no PHI is returned, logged or audited."
    ),
)
emergency_fastapi_app = FastAPI(
    title="medray diagnosis: emergency lane",
    version="1",
    description=(
        "The reserved emergency lane, with an ingress of its own: `POST /emergency/v1/diagnose` takes the "
        "same bodies and answers as the routine `POST /v1/diagnose`, with a token of scope `emergency`."
    ),
)


class Coding(BaseModel):
    system: str
    code: str
    display: str


class Finding(BaseModel):
    name: str = Field(description="what the expert's model looks for (medray.models.findings), e.g. lung-nodule")
    probability: float
    label: str = Field(description="the finding's positive or negative label, e.g. nodule_suspected or "
                                   "no_nodule_detected")
    threshold: float
    body_site: Coding = Field(description="SNOMED CT body site the expert reads, e.g. 39607008 Lung structure")
    code: Coding | None = Field(description="ICD-10-CM code of a positive finding (null when negative)")


class StudyRef(BaseModel):
    study_ref: str = Field(description="pseudonymous StudyInstanceUID (2.25.…)")
    series_ref: str = Field(description="pseudonymous SeriesInstanceUID (2.25.…)")
    patient_ref: str | None = Field(description="patient pseudonym (as in de-identified data)")
    modality: str = Field(description="as routed: the expert's modality")
    body_part: str | None = Field(description="as routed: the expert's body part (null for MODALITY/*)")
    instances: int


class DiagnoseResponse(BaseModel):
    request_id: str
    finding: Finding
    model: str = Field(description="name:version of the model that answered")
    expert: str
    study: StudyRef
    lane: str
    served_by: dict[str, Any] = Field(description="lane, node_type, backend and batch_size of the inference")
    timings_ms: dict[str, float]


class ErrorResponse(BaseModel):
    request_id: str
    error: str = Field(description="stable reason code, e.g. not_dicom, too_large, wrong_scope")
    detail: str


class ActivateRequest(BaseModel):
    expert: str = Field(description="routing key, e.g. CT/CHEST")
    model: str = Field(description="name:version (or name:latest) in the registry")


_DICOM_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            DICOM: {"schema": {"type": "string", "format": "binary"}},
            'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 413, 415, 422, 503)
}


class _Reject(Exception):
    """An answer other than 200, with a reason code and a PHI-free message."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers or {}


def route_expert(experts: dict[str, str], modality: str, body_part: str) -> tuple[str, str] | None:
    """(expert key, model ref) for a modality and body part: exact match, else ``MODALITY/*``."""
    for key in (expert_key(modality, body_part), expert_key(modality, "*")):
        if key in experts:
            return key, experts[key]
    return None


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    too_large = _Reject(413, "too_large", f"the request body exceeds {limit} bytes: send fewer instances per request")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Reject(400, "bad_content_length", "Content-Length must be a number of bytes")
        if int(declared) > limit:
            raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked uploads declare no length: count as they stream
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class _Front:
    """The request path both lanes' ingresses share: tokens, audit, bounds, routing, the lane's engine."""

    async def _start(self, lane: str, args: DiagnosisArgs, catalog: Any) -> None:
        self._lane = lane
        self._args = args
        self._tokens = TokenFile(args.tokens, on_error=lambda e: log.error("token file: %s", e))
        audit_key = load_key(args.audit_key_file) if args.audit_key_file else None
        self._audit = AuditLog(args.audit_log, key=audit_key, fsync=args.audit_fsync)
        self._catalog = catalog
        sizes = args.lanes[lane]
        # The emergency lane's bound is Serve's own (in front of the replicas); routine studies
        # are bounded here, per replica.
        self._limit = (sizes.max_ongoing_requests + sizes.max_queued_requests
                       if lane == "routine" and sizes.max_queued_requests >= 0 else None)
        self._active = 0
        self._engine = Engine(lane, args, catalog)
        await self._engine.start()
        # The lane's requests in flight here: the queue evidence the priority broker lends on.
        self._inflight = InFlight()
        self._reporter: asyncio.Task[None] | None = None
        self._stepping_down = False
        if args.broker:
            context = serve.get_replica_context()
            self._reporter = report_queues({f"{args.app_name}/{lane}": self._inflight},
                                           source=context.replica_id.unique_id)
        self._requests = counter("diagnosis_requests", "diagnosis requests by lane and status", ("lane", "status"))
        self._latency = histogram("diagnosis_latency_ms", "diagnosis request latency (ms)",
                                  (5, 10, 20, 50, 100, 200, 500, 1000, 5000), ("lane",))

    async def check_health(self) -> None:
        """Serve's health check; fails for good once the priority broker asks this replica to step
        down (it runs on a lent node while the lane's own nodes have room): Serve then stops it
        gracefully, its requests answered first, and starts a replacement where the lane belongs."""
        if self._args.broker and not self._stepping_down:
            self._stepping_down = await asked_to_step_down(f"{self._args.app_name}/{self._lane}")
        if self._stepping_down:
            raise RuntimeError("stepping down from a node lent by research: the lane's own nodes have room")

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self._args.retry_after_s)))}

    def _authorize(self, request: Request, scopes: Collection[str], record: dict[str, Any]) -> None:
        try:
            client = self._tokens.current().authorize(request.headers.get("authorization"), scopes)
        except AuthError as e:
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
            raise _Reject(e.status, e.reason, e.message, headers) from None
        record["client"] = client.name

    def _finish(self, record: dict[str, Any], start: float, status: int, body: dict[str, Any] | None,
                headers: dict[str, str] | None = None, media_type: str = "application/json") -> Response:
        latency_ms = (time.perf_counter() - start) * 1e3
        record.update(status=status, latency_ms=round(latency_ms, 2))
        try:
            # Written before the answer leaves: no answer without an audit record.
            self._audit.append(record)
        except AuditError as e:
            log.error("%s", e)
            body, status, headers = ({"request_id": record["request_id"], "error": "audit_unavailable",
                                      "detail": "the audit log cannot be written; no answer is given without it"},
                                     503, {"Retry-After": "30"})
            media_type = "application/json"
        lane = record.get("lane") or "none"
        self._requests.inc(tags={"lane": lane, "status": str(status)})
        self._latency.observe(latency_ms, tags={"lane": lane})
        headers = {"X-Medray-Request-Id": record["request_id"], **(headers or {})}
        if body is None:
            return Response(status_code=status, headers=headers)
        return JSONResponse(body, status_code=status, media_type=media_type, headers=headers)

    def _reject(self, record: dict[str, Any], start: float, e: _Reject) -> Response:
        record["outcome"] = e.reason
        return self._finish(record, start, e.status,
                            {"request_id": record["request_id"], "error": e.reason, "detail": e.message}, e.headers)

    def _new_record(self, route: str) -> dict[str, Any]:
        return {"request_id": uuid.uuid4().hex, "route": route, "client": None}

    async def _diagnose(self, instances: list[bytes], ref: str, first: Dataset) -> dict[str, Any]:
        if self._limit is not None and self._active >= self._limit:
            raise _Reject(503, "overloaded", f"the {self._lane} lane is at capacity: retry later", self._retry_after())
        self._active += 1
        try:
            return await self._engine.diagnose(instances, ref, first)
        finally:
            self._active -= 1

    async def _handle_diagnose(self, request: Request, route: str, *, stow: bool = False) -> Response:
        """Authenticate, read, route and diagnose one study on this ingress's lane; audit; answer
        (with ``stow``: a STOW-RS response, :meth:`_stow_answer`)."""
        start = time.perf_counter()
        lane = self._lane
        record = self._new_record(route)
        record["lane"] = lane
        instances: list[bytes] = []
        try:
            self._authorize(request, (LANE_SCOPES[lane],), record)
            body = await _read_body(request, self._args.max_body_bytes)
            instances = split_body(request.headers.get("content-type"), body)
            # Parsed once here (checks included), routed on, and handed to the diagnosis.
            first = read_instance(instances[0], max_pixels=self._args.max_instance_pixels)
            modality, body_part = routing_fields(first)
            routed = route_expert(self._engine.experts, modality, body_part)
            if routed is None:
                # The study's own values are not quoted: they come from the input.
                raise _Reject(422, "unsupported_modality",
                              f"no model serves this study's modality and body part; served: {sorted(self._engine.experts)}")
            record["expert"], record["model"] = routed
            sent = time.perf_counter()
            token = self._inflight.start(time.monotonic())
            try:
                result = await self._diagnose(instances, routed[1], first)
            finally:
                self._inflight.end(token)
            lane_ms = (time.perf_counter() - sent) * 1e3
            if "error" in result:
                status = (503 if result["error"] in ("model_unavailable", "queue_timeout")
                          else REASON_STATUS.get(result["error"], 500))
                raise _Reject(status, result["error"], result["message"], self._retry_after() if status == 503 else None)
        except _Reject as e:
            return self._reject(record, start, e)
        except BodyError as e:
            return self._reject(record, start, _Reject(e.status, e.reason, e.message))
        except DicomError as e:
            if stow and instances:
                return self._stow_answer(record, start, instances, failure=e.reason)
            return self._reject(record, start, _Reject(REASON_STATUS[e.reason], e.reason, e.message))
        except (BackPressureError, DeploymentUnavailableError) as e:
            return self._reject(record, start, _Reject(
                503, "overloaded", f"the {lane} lane is at capacity ({type(e).__name__}): retry later",
                self._retry_after()))
        except Exception as e:
            # A bug: the class name only, never the message (it could quote the input).
            log.error("diagnose failed: %s", type(e).__name__)
            return self._reject(record, start, _Reject(500, "internal", "internal error; the request was not diagnosed"))
        total_ms = round((time.perf_counter() - start) * 1e3, 2)
        expert = record["expert"]
        modality, _, body_part = expert.partition("/")
        response = {"request_id": record["request_id"], **result, "expert": expert, "lane": lane,
                    # As routed (from the configuration), never as written in the file.
                    "study": {**result["study"], "modality": modality, "body_part": None if body_part == "*" else body_part},
                    "timings_ms": {**result["timings_ms"], "lane": round(lane_ms, 2), "total": total_ms}}
        study, finding = response["study"], response["finding"]
        record.update(model=result["model"], study_ref=study["study_ref"], series_ref=study["series_ref"],
                      outcome=finding["label"], probability=finding["probability"], instances=study["instances"])
        if stow:
            return self._stow_answer(record, start, instances)
        if FHIR_JSON in request.headers.get("accept", ""):
            issued = datetime.now(timezone.utc).isoformat(timespec="seconds")
            report = diagnostic_report(response, report_id=record["request_id"], issued=issued)
            return self._finish(record, start, 200, report, media_type=FHIR_JSON)
        return self._finish(record, start, 200, response)

    def _stow_answer(self, record: dict[str, Any], start: float, instances: list[bytes],
                     failure: str | None = None) -> Response:
        """The STOW-RS response (PS3.18 10.5.3) of a series diagnosed (every instance processed) or
        refused for its DICOM content (``failure``: every instance failed, 409). It references the
        instances by the sender's own UIDs, to the sender only: they are not audited or logged."""
        refs = instance_refs(instances)
        if failure is not None:
            record["outcome"] = failure
            body = stow_response([], [(*ref, failure_status(failure)) for ref in refs])
            return self._finish(record, start, stow_status(0, len(refs)), body, media_type=DICOM_JSON)
        return self._finish(record, start, stow_status(len(refs), 0), stow_response(refs), media_type=DICOM_JSON)

    def _health(self) -> dict[str, Any]:
        return {"status": "ok", "lane": self._lane, "catalog_version": self._engine.catalog_version,
                "experts": sorted(self._engine.experts)}


@serve.ingress(fastapi_app)
class DiagnosisAPI(_Front):
    """The routine lane's ingress and the model routes; see the module docstring."""

    async def __init__(self, args: DiagnosisArgs, catalog: Any) -> None:
        await self._start("routine", args, catalog)

    @fastapi_app.post("/v1/diagnose", response_model=DiagnoseResponse, openapi_extra=_DICOM_BODY,
                      responses={**_ERRORS, 200: {"content": {FHIR_JSON: {}}},
                                 307: {"description": f"{PRIORITY_HEADER}: emergency: redirected, unread, "
                                                      "to POST /emergency/v1/diagnose"}},
                      summary="Diagnose one DICOM instance or series, routine lane (scope: clinic)")
    async def diagnose(self, request: Request) -> Response:
        priority = request.headers.get(PRIORITY_HEADER)
        if priority is not None and priority.strip().lower() != "routine":
            start, record = time.perf_counter(), self._new_record("POST /v1/diagnose")
            if priority.strip().lower() != "emergency":
                return self._reject(record, start, _Reject(
                    400, "bad_priority", f"{PRIORITY_HEADER} must be one of {list(LANE_PRIORITIES)}"))
            # The emergency lane has its own ingress: the body is not read here, a client that
            # follows redirects sends it there (307 keeps the method and the body).
            record.update(lane="emergency", outcome="redirected")
            return self._finish(record, start, 307, None, {"Location": lane_url("emergency", "/v1/diagnose")})
        return await self._handle_diagnose(request, "POST /v1/diagnose")

    @fastapi_app.post("/dicomweb/studies", openapi_extra=_DICOM_BODY,
                      responses={**_ERRORS, 200: {"content": {DICOM_JSON: {}}}, 409: {"content": {DICOM_JSON: {}}}},
                      summary="STOW-RS (PS3.18 10.5): diagnose a series, answer the Store Instances Response "
                              "(scope: clinic)")
    async def stow(self, request: Request) -> Response:
        return await self._handle_diagnose(request, "POST /dicomweb/studies", stow=True)

    @fastapi_app.get("/v1/models", responses=_ERRORS,
                     summary="Registered models, the active routing table and loaded models (scope: research or admin)")
    async def models(self, request: Request) -> Response:
        start = time.perf_counter()
        record = self._new_record("GET /v1/models")
        try:
            self._authorize(request, ("research", "admin"), record)
        except _Reject as e:
            return self._reject(record, start, e)
        record["outcome"] = "listed"
        return self._finish(record, start, 200, await self._catalog.models.remote())

    @fastapi_app.put("/v1/models/active", responses=_ERRORS,
                     summary="Serve another model version for an expert, without restart (scope: admin)")
    async def activate(self, request: Request, change: ActivateRequest) -> Response:
        start = time.perf_counter()
        record = self._new_record("PUT /v1/models/active")
        try:
            self._authorize(request, ("admin",), record)
            record.update(expert=change.expert, model=change.model)
            answer = await self._catalog.activate.remote(change.expert, change.model)
            if "error" in answer:
                raise _Reject(422, "bad_model", answer["error"])
            # This replica switches now; the others (and the emergency lane) within a second.
            await self._engine.follow(answer["catalog_version"], answer["experts"])
        except _Reject as e:
            return self._reject(record, start, e)
        record["outcome"] = "activated"
        return self._finish(record, start, 200, answer)

    @fastapi_app.get("/healthz", summary="Liveness: the ingress answers and knows its routing table (open)")
    async def healthz(self) -> dict[str, Any]:
        return self._health()


@serve.ingress(emergency_fastapi_app)
class EmergencyAPI(_Front):
    """The emergency lane's own ingress, on replicas reserved for it; see the module docstring."""

    async def __init__(self, args: DiagnosisArgs) -> None:
        await self._start("emergency", args, catalog_handle(args.app_name))

    @emergency_fastapi_app.post("/v1/diagnose", response_model=DiagnoseResponse, openapi_extra=_DICOM_BODY,
                                responses={**_ERRORS, 200: {"content": {FHIR_JSON: {}}}},
                                summary="Diagnose one DICOM instance or series, emergency lane (scope: emergency)")
    async def diagnose(self, request: Request) -> Response:
        return await self._handle_diagnose(request, "POST /emergency/v1/diagnose")

    @emergency_fastapi_app.post("/dicomweb/studies", openapi_extra=_DICOM_BODY,
                                responses={**_ERRORS, 200: {"content": {DICOM_JSON: {}}}, 409: {"content": {DICOM_JSON: {}}}},
                                summary="STOW-RS, emergency lane (scope: emergency)")
    async def stow(self, request: Request) -> Response:
        return await self._handle_diagnose(request, "POST /emergency/dicomweb/studies", stow=True)

    @emergency_fastapi_app.get("/healthz", summary="Liveness of the emergency lane (open)")
    async def healthz(self) -> dict[str, Any]:
        return self._health()
