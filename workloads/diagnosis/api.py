"""The HTTP ingress (FastAPI on Serve): authenticate, bound, route, diagnose or dispatch, audit, answer.

Routine studies are diagnosed right here, by the replica's :class:`~workloads.diagnosis.deployments.Engine`
(no second hop on the hot path); each replica admits at most ``max_ongoing_requests +
max_queued_requests`` of them (503 with ``Retry-After`` beyond), so routine load queues here and
never in front of an emergency. ``X-Medray-Priority: emergency`` studies go to the reserved
``emergency`` deployment by handle. The expert model is chosen from two header fields of the first
instance (``Modality``/``BodyPartExamined``).

Route scopes: ``POST /v1/diagnose`` needs ``clinic``; ``GET /v1/models`` needs ``research`` or
``admin``; ``PUT /v1/models/active`` needs ``admin``; ``/healthz`` and the OpenAPI docs are open
(they hold no data). Every request to a ``/v1`` route, refused or not, appends one audit entry.
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
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from medray.broker.client import report_queues
from medray.broker.lanes import InFlight
from medray.dicom.multipart import DICOM, BodyError, split_body
from medray.dicom.volume import read_instance
from medray.errors import DicomError
from medray.logs import get_logger
from medray.metrics import counter, histogram
from medray.privacy.pseudonym import load_key
from medray.security.audit import AuditError, AuditLog
from medray.security.tokens import AuthError, TokenFile
from workloads.diagnosis.config import LANES, PRIORITY_HEADER, REASON_STATUS, DiagnosisArgs, expert_key
from workloads.diagnosis.deployments import Engine
from workloads.diagnosis.fhir import FHIR_JSON, diagnostic_report
from workloads.diagnosis.pipeline import routing_fields

__all__ = ["fastapi_app", "DiagnosisAPI", "route_expert"]

log = get_logger("diagnosis")

fastapi_app = FastAPI(
    title="medray diagnosis",
    version="1",
    description=(
        "Real-time findings for DICOM studies. Send one instance (`application/dicom`) or a series "
        "(`multipart/related; type=\"application/dicom\"`, as DICOMweb STOW-RS does) with "
        "`Authorization: Bearer <token>`. `X-Medray-Priority: emergency` uses the reserved lane. "
        "`Accept: application/fhir+json` answers with a FHIR R4 DiagnosticReport. "
        "Identifiers in answers are pseudonyms; no PHI is returned, logged or audited."
    ),
)


class Finding(BaseModel):
    name: str = Field(description="what the model looks for, e.g. lung_nodule")
    probability: float
    label: str = Field(description="nodule_suspected or no_nodule_detected")
    threshold: float


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
    served_by: dict[str, str]
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
    "parameters": [{"name": PRIORITY_HEADER, "in": "header", "required": False,
                    "schema": {"type": "string", "enum": list(LANES), "default": "routine"}}],
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


@serve.ingress(fastapi_app)
class DiagnosisAPI:
    """The ingress deployment; see the module docstring."""

    async def __init__(self, args: DiagnosisArgs, catalog: Any, emergency: Any) -> None:
        self._args = args
        self._tokens = TokenFile(args.tokens, on_error=lambda e: log.error("token file: %s", e))
        audit_key = load_key(args.audit_key_file) if args.audit_key_file else None
        self._audit = AuditLog(args.audit_log, key=audit_key, fsync=args.audit_fsync)
        self._catalog = catalog
        self._emergency = emergency
        self._emergency_handles: dict[str, Any] = {}
        routine = args.lanes["routine"]
        self._routine_limit = (routine.max_ongoing_requests + routine.max_queued_requests
                               if routine.max_queued_requests >= 0 else None)
        self._routine_active = 0
        self._engine = Engine("routine", args, catalog)
        await self._engine.start()
        # Each lane's requests in flight here: the queue evidence the priority broker lends on.
        self._inflight = {lane: InFlight() for lane in LANES}
        self._reporter: asyncio.Task[None] | None = None
        if args.broker:
            context = serve.get_replica_context()
            lanes = {f"{context.app_name}/{lane}": q for lane, q in self._inflight.items()}
            self._reporter = report_queues(lanes, source=context.replica_id.unique_id)
        self._requests = counter("diagnosis_requests", "diagnosis requests by lane and status", ("lane", "status"))
        self._latency = histogram("diagnosis_latency_ms", "diagnosis request latency (ms)",
                                  (5, 10, 20, 50, 100, 200, 500, 1000, 5000), ("lane",))

    async def _diagnose(self, lane: str, instances: list[bytes], ref: str, first: Dataset) -> dict[str, Any]:
        if lane == "emergency":
            if ref not in self._emergency_handles:
                self._emergency_handles[ref] = self._emergency.options(multiplexed_model_id=ref)
            return await self._emergency_handles[ref].diagnose.remote(instances)
        if self._routine_limit is not None and self._routine_active >= self._routine_limit:
            raise _Reject(503, "overloaded", "the routine lane is at capacity: retry later", self._retry_after())
        self._routine_active += 1
        try:
            return await self._engine.diagnose(instances, ref, first)
        finally:
            self._routine_active -= 1

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self._args.retry_after_s)))}

    def _authorize(self, request: Request, scopes: Collection[str], record: dict[str, Any]) -> None:
        try:
            client = self._tokens.current().authorize(request.headers.get("authorization"), scopes)
        except AuthError as e:
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
            raise _Reject(e.status, e.reason, e.message, headers) from None
        record["client"] = client.name

    def _finish(self, record: dict[str, Any], start: float, status: int, body: dict[str, Any],
                headers: dict[str, str] | None = None, media_type: str = "application/json") -> JSONResponse:
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
        return JSONResponse(body, status_code=status, media_type=media_type,
                            headers={"X-Medray-Request-Id": record["request_id"], **(headers or {})})

    def _reject(self, record: dict[str, Any], start: float, e: _Reject) -> JSONResponse:
        record["outcome"] = e.reason
        return self._finish(record, start, e.status,
                            {"request_id": record["request_id"], "error": e.reason, "detail": e.message}, e.headers)

    def _new_record(self, route: str) -> dict[str, Any]:
        return {"request_id": uuid.uuid4().hex, "route": route, "client": None}

    @fastapi_app.post("/v1/diagnose", response_model=DiagnoseResponse, openapi_extra=_DICOM_BODY,
                      responses={**_ERRORS, 200: {"content": {FHIR_JSON: {}}}},
                      summary="Diagnose one DICOM instance or series (scope: clinic)")
    async def diagnose(self, request: Request) -> JSONResponse:
        start = time.perf_counter()
        record = self._new_record("POST /v1/diagnose")
        try:
            self._authorize(request, ("clinic",), record)
            priority = request.headers.get(PRIORITY_HEADER, "routine").strip().lower()
            if priority not in LANES:
                raise _Reject(400, "bad_priority", f"{PRIORITY_HEADER} must be one of {list(LANES)}")
            record["lane"] = priority
            body = await _read_body(request, self._args.max_body_bytes)
            instances = split_body(request.headers.get("content-type"), body)
            # Parsed once here (checks included), routed on, and handed to a routine diagnosis.
            first = read_instance(instances[0], max_pixels=self._args.max_instance_pixels)
            modality, body_part = routing_fields(first)
            routed = route_expert(self._engine.experts, modality, body_part)
            if routed is None:
                # The study's own values are not quoted: they come from the input.
                raise _Reject(422, "unsupported_modality",
                              f"no model serves this study's modality and body part; served: {sorted(self._engine.experts)}")
            record["expert"], record["model"] = routed
            sent = time.perf_counter()
            token = self._inflight[priority].start(time.monotonic())
            try:
                result = await self._diagnose(priority, instances, routed[1], first)
            finally:
                self._inflight[priority].end(token)
            lane_ms = (time.perf_counter() - sent) * 1e3
            if "error" in result:
                status = 503 if result["error"] == "model_unavailable" else REASON_STATUS.get(result["error"], 500)
                raise _Reject(status, result["error"], result["message"], self._retry_after() if status == 503 else None)
        except _Reject as e:
            return self._reject(record, start, e)
        except BodyError as e:
            return self._reject(record, start, _Reject(e.status, e.reason, e.message))
        except DicomError as e:
            return self._reject(record, start, _Reject(REASON_STATUS[e.reason], e.reason, e.message))
        except (BackPressureError, DeploymentUnavailableError) as e:
            return self._reject(record, start, _Reject(
                503, "overloaded", f"the {record.get('lane')} lane is at capacity ({type(e).__name__}): retry later",
                self._retry_after()))
        except Exception as e:
            # A lane replica died mid-request, or a bug: the class name only, never the message.
            log.error("diagnose failed: %s", type(e).__name__)
            return self._reject(record, start, _Reject(500, "internal", "internal error; the request was not diagnosed"))
        total_ms = round((time.perf_counter() - start) * 1e3, 2)
        expert = record["expert"]
        modality, _, body_part = expert.partition("/")
        response = {"request_id": record["request_id"], **result, "expert": expert, "lane": priority,
                    # As routed (from the configuration), never as written in the file.
                    "study": {**result["study"], "modality": modality, "body_part": None if body_part == "*" else body_part},
                    "served_by": {**result["served_by"], "ingress_node_type": self._engine.node_type},
                    "timings_ms": {**result["timings_ms"], "lane": round(lane_ms, 2), "total": total_ms}}
        study, finding = response["study"], response["finding"]
        record.update(model=result["model"], study_ref=study["study_ref"], series_ref=study["series_ref"],
                      outcome=finding["label"], probability=finding["probability"], instances=study["instances"])
        if FHIR_JSON in request.headers.get("accept", ""):
            issued = datetime.now(timezone.utc).isoformat(timespec="seconds")
            report = diagnostic_report(response, report_id=record["request_id"], issued=issued)
            return self._finish(record, start, 200, report, media_type=FHIR_JSON)
        return self._finish(record, start, 200, response)

    @fastapi_app.get("/v1/models", responses=_ERRORS,
                     summary="Registered models, the active routing table and loaded models (scope: research or admin)")
    async def models(self, request: Request) -> JSONResponse:
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
    async def activate(self, request: Request, change: ActivateRequest) -> JSONResponse:
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
        return {"status": "ok", "catalog_version": self._engine.catalog_version, "experts": sorted(self._engine.experts)}
