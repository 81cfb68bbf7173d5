"""The diagnosis service on the shared local cluster: real Serve, real HTTP, real DICOM.

One deployment (both lanes' applications) for the whole module. Its routine lane is deliberately
tiny (one ingress replica, two routine requests at once, two waiting) so that the priority test
can saturate it; its simulated GPUs take 40 ms a batch of one, so that batches form under load.
"""

import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom.data import get_testdata_file

from medray.broker.lanes import lane_url
from medray.cluster import ray_internals
from medray.dicom.multipart import encode_series
from medray.privacy.pseudonym import load_key, pseudo_uid, pseudonym
from medray.security.audit import verify_chain
from tests.workloads.diagnosis import _dicom
from tests.workloads.diagnosis.conftest import register_seeded
from workloads.diagnosis.local import run_local, stop_local
from workloads.diagnosis.pipeline import load_model, predict, prepare

MAX_BODY_MB = 1


@dataclass
class Service:
    url: str
    root: Path
    tokens: dict
    client: httpx.Client
    request_ids: list = field(default_factory=list)
    # Upper case too: DICOM code fields are upper-cased when read.
    phi: set = field(default_factory=lambda: {*_dicom.PHI, *(p.upper() for p in _dicom.PHI)})

    def post(self, body, content_type="application/dicom", *, lane="routine", token=None, headers=None, **kw):
        """POST to ``lane``'s diagnose route, with a token of the lane's scope unless ``token`` names
        another scope (False: none)."""
        h = {"Content-Type": content_type, **(headers or {})}
        token = token if token is not None else {"routine": "clinic", "emergency": "emergency"}[lane]
        if token:
            h["Authorization"] = f"Bearer {self.tokens[token]}"
        r = self.client.post(lane_url(lane, "/v1/diagnose"), content=body, headers=h, **kw)
        self.request_ids.append(r.headers.get("x-medray-request-id"))
        return r

    def assert_no_phi(self, text):
        leaked = [p for p in self.phi if p in text]
        assert not leaked, f"PHI leaked: {leaked}"


@pytest.fixture(scope="module")
def service(ray_cluster, service_dir):
    root, tokens = service_dir
    args = {
        "registry": str(root / "registry"),
        "tokens": str(root / "tokens.json"),
        "audit_log": str(root / "audit.jsonl"),
        "key_file": str(root / "deid.key"),
        "experts": {"CT/CHEST": "nodule:latest", "CT/HEAD": "ich:latest", "CT/*": "nodule:latest"},
        "max_body_mb": MAX_BODY_MB,
        "max_instance_pixels": 512 * 512,
        "simulated_gpu_ms": 40,
        "lanes": {
            "routine": {"min_replicas": 1, "max_replicas": 1, "max_ongoing_requests": 2, "max_queued_requests": 2},
            "emergency": {"min_replicas": 1, "max_replicas": 1},
        },
    }
    url = run_local(args)
    with httpx.Client(base_url=url, timeout=60) as client:
        yield Service(url=url, root=root, tokens=tokens, client=client)
    stop_local()


def cohort_series(cohort, study=0):
    paths = sorted((cohort / "dicom" / f"study_{study:04d}" / "series_01").glob("*.dcm"))
    return [p.read_bytes() for p in paths]


def phi_of(instances):
    ds = pydicom.dcmread(io.BytesIO(instances[0]))
    return {str(ds.PatientName), str(ds.PatientID), ds.StudyInstanceUID, ds.SeriesInstanceUID,
            str(ds.PatientName).split("^")[0]}


def expected_probability(service, ref, instances):
    model = load_model(service.root / "registry", ref)
    return predict(model, prepare(instances, model.spec, max_pixels=512 * 512).x[None])[0]


def test_a_series_gets_a_deterministic_pseudonymous_finding(service, cohort):
    instances = cohort_series(cohort)
    service.phi |= phi_of(instances)
    body, content_type = encode_series(instances)
    first, second = service.post(body, content_type), service.post(body, content_type)
    assert first.status_code == 200, first.text
    result = first.json()
    assert result["finding"]["probability"] == second.json()["finding"]["probability"]
    assert result["finding"]["probability"] == pytest.approx(
        expected_probability(service, "nodule:1", instances), abs=1e-5)
    assert result["model"] == "nodule:1" and result["expert"] == "CT/CHEST" and result["lane"] == "routine"
    assert result["finding"]["label"] in ("nodule_suspected", "no_nodule_detected")
    key = load_key(service.root / "deid.key")
    ds = pydicom.dcmread(io.BytesIO(instances[0]))
    assert result["study"]["study_ref"] == pseudo_uid(key, ds.StudyInstanceUID)
    assert result["study"]["patient_ref"] == pseudonym(key, ds.PatientID, kind="patient")
    assert result["study"]["instances"] == len(instances)
    service.assert_no_phi(first.text)


def test_a_real_pydicom_ct_file_is_diagnosed(service):
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    service.phi |= {"CompressedSamples", "1CT1"}
    r = service.post(data)
    assert r.status_code == 200, r.text
    # CT_small.dcm states no body part: the CT/* expert takes it.
    assert r.json()["expert"] == "CT/*"
    assert r.json()["finding"]["probability"] == pytest.approx(
        expected_probability(service, "nodule:1", [data]), abs=1e-5)
    service.assert_no_phi(r.text)


def test_free_text_where_a_code_belongs_is_never_echoed(service):
    r = service.post(_dicom.ct_slice(body_part="Quixby Zelphine"))
    assert r.status_code == 200 and r.json()["expert"] == "CT/*" and r.json()["study"]["body_part"] is None
    service.assert_no_phi(r.text)
    mr = service.post(_dicom.ct_slice(modality="Quixby", body_part="Zelphine"))
    assert mr.status_code == 422
    service.assert_no_phi(mr.text)


def test_fhir_accept_header_gives_a_valid_r4_diagnostic_report(service, cohort):
    instances = cohort_series(cohort, study=1)
    service.phi |= phi_of(instances)
    body, content_type = encode_series(instances)
    r = service.post(body, content_type, headers={"Accept": "application/fhir+json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    report = DiagnosticReport.model_validate(r.json())
    key = load_key(service.root / "deid.key")
    patient_id = pydicom.dcmread(io.BytesIO(instances[0])).PatientID
    assert report.subject.reference == f"Patient/{pseudonym(key, patient_id, kind='patient')}"
    assert report.status == "preliminary" and "nodule" in report.conclusion.lower()
    assert report.extension[0].valueString == "nodule:1"
    assert [c.code for c in report.code.coding] == ["24627-2"]  # LOINC CT Chest
    assert [c.code for c in report.contained[0].bodySite.coding] == ["39607008"]  # SNOMED lung structure
    service.assert_no_phi(r.text)


def test_routing_chooses_between_two_experts_and_each_reports_its_own_finding(service, cohort):
    head = [_dicom.ct_slice(z, instance=i + 1, body_part="HEAD") for i, z in enumerate((0.0, 6.0, 12.0))]
    chest = [_dicom.ct_slice(z, instance=i + 1) for i, z in enumerate((0.0, 6.0, 12.0))]
    answers = {}
    for part, instances in (("HEAD", head), ("CHEST", chest)):
        body, content_type = encode_series(instances)
        r = service.post(body, content_type)
        assert r.status_code == 200, r.text
        answers[part] = r.json()
        fhir = service.post(body, content_type, headers={"Accept": "application/fhir+json"})
        answers[part]["report"] = DiagnosticReport.model_validate(fhir.json())
        service.assert_no_phi(r.text + fhir.text)
    ich, nodule = answers["HEAD"], answers["CHEST"]
    assert (ich["expert"], ich["model"], ich["finding"]["name"]) == ("CT/HEAD", "ich:1", "intracranial-hemorrhage")
    assert (nodule["expert"], nodule["model"], nodule["finding"]["name"]) == ("CT/CHEST", "nodule:1", "lung-nodule")
    assert ich["finding"]["label"] in ("hemorrhage_suspected", "no_hemorrhage_detected")
    assert ich["finding"]["probability"] == pytest.approx(expected_probability(service, "ich:1", head), abs=1e-5)
    assert ich["finding"]["body_site"]["code"] == "12738006"  # SNOMED brain structure
    assert nodule["finding"]["body_site"]["code"] == "39607008"
    assert [c.code for c in ich["report"].code.coding] == ["24725-4"]  # LOINC CT Head
    assert "hemorrhage" in ich["report"].conclusion.lower() and "nodule" not in ich["report"].conclusion.lower()
    assert [c.code for c in nodule["report"].code.coding] == ["24627-2"]


def _chunks(data, size=64 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _truncated():
    data = _dicom.ct_slice(rows=64, columns=64)
    return data[: int(len(data) * 0.6)]


def _mixed_series():
    a = _dicom.ct_slice(0.0)
    ds = pydicom.dcmread(io.BytesIO(_dicom.ct_slice(6.0, instance=2)))
    ds.SeriesInstanceUID = _dicom.SERIES_UID + ".9"
    out = io.BytesIO()
    ds.save_as(out)
    return encode_series([a, out.getvalue()])


BIG = b"\0" * (MAX_BODY_MB * 1024 * 1024 + 1)
BAD_INPUTS = {
    # name: (body, content type, extra headers, status, reason)
    "wrong content type": (b"Quixby^Zelphine", "text/plain", {}, 415, "unsupported_media_type"),
    "not dicom": (b"Patient Quixby^Zelphine MRN-CANARY-90210\n" * 50, "application/dicom", {}, 400, "not_dicom"),
    "truncated": (_truncated(), "application/dicom", {}, 400, "truncated"),
    "no pixel data": (_dicom.ct_slice(drop_pixels=True), "application/dicom", {}, 422, "no_pixel_data"),
    "unsupported modality": (_dicom.ct_slice(modality="MR"), "application/dicom", {}, 422, "unsupported_modality"),
    "inconsistent series": (*_mixed_series(), {}, 422, "inconsistent_series"),
    "malformed multipart": (b"--x\r\n\r\nabc", 'multipart/related; type="application/dicom"; boundary=x', {},
                            400, "malformed_multipart"),
    "too large (Content-Length)": (BIG, "application/dicom", {}, 413, "too_large"),
    "too large (streamed)": (_chunks(BIG), "application/dicom", {}, 413, "too_large"),
    "decompression bomb": (_dicom.bomb(), "application/dicom", {}, 413, "too_large"),
    "bad priority": (_dicom.ct_slice(), "application/dicom", {"X-Medray-Priority": "urgent!"}, 400, "bad_priority"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_its_status_and_the_service_keeps_serving(service, name):
    body, content_type, headers, status, reason = BAD_INPUTS[name]
    r = service.post(body, content_type, headers=headers)
    assert (r.status_code, r.json()["error"]) == (status, reason), r.text
    service.assert_no_phi(r.text)
    good = service.post(_dicom.ct_slice())
    assert good.status_code == 200, good.text


def test_tokens_and_scopes(service):
    slice_ = _dicom.ct_slice()
    missing = service.post(slice_, token=False)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    forged = service.client.post("/v1/diagnose", content=slice_, headers={
        "Authorization": "Bearer mdr_forged", "Content-Type": "application/dicom"})
    assert forged.status_code == 401 and forged.json()["error"] == "unknown_token"
    assert service.post(slice_, token="research").status_code == 403
    assert service.post(slice_, token="admin").status_code == 403
    # The emergency lane needs its own scope: a clinic token cannot claim it, nor the reverse.
    claimed = service.post(slice_, lane="emergency", token="clinic")
    assert (claimed.status_code, claimed.json()["error"]) == (403, "wrong_scope")
    assert service.post(slice_, lane="routine", token="emergency").status_code == 403
    assert service.post(slice_, lane="emergency").status_code == 200

    def get_models(token):
        return service.client.get("/v1/models", headers={"Authorization": f"Bearer {service.tokens[token]}"})

    assert get_models("clinic").status_code == 403
    listing = get_models("research").json()
    assert [(m["ref"], m["active_for"]) for m in listing["models"]] == [
        ("ich:1", ["CT/HEAD"]), ("nodule:1", ["CT/*", "CT/CHEST"])]
    assert get_models("admin").status_code == 200
    swap = service.client.put("/v1/models/active", json={"expert": "CT/CHEST", "model": "nodule:1"},
                              headers={"Authorization": f"Bearer {service.tokens['clinic']}"})
    assert swap.status_code == 403
    for open_route in ("/healthz", "/docs", "/openapi.json"):
        assert service.client.get(open_route).status_code == 200
    assert "/v1/diagnose" in service.client.get("/openapi.json").json()["paths"]
    assert service.client.get("/emergency/healthz").json()["lane"] == "emergency"


def test_the_priority_header_is_redirected_unread_to_the_emergency_ingress(service):
    r = service.post(_dicom.ct_slice(), headers={"X-Medray-Priority": "emergency"})
    assert r.status_code == 307 and r.headers["location"] == "/emergency/v1/diagnose"
    assert r.content == b""
    # A client that follows redirects (307 keeps method and body) is served by the emergency lane,
    # if its token holds the emergency scope.
    followed = service.post(_dicom.ct_slice(), headers={"X-Medray-Priority": "emergency"}, token="emergency",
                            follow_redirects=True)
    assert followed.status_code == 200 and followed.json()["served_by"]["lane"] == "emergency"

def test_replicas_run_on_inference_nodes(service, node_types):
    roles = {t.name: t.role for t in node_types}
    for lane in ("routine", "emergency"):
        r = service.post(_dicom.ct_slice(), lane=lane)
        served = r.json()["served_by"]
        assert served["lane"] == lane and roles[served["node_type"]] == "infer"


def test_batches_form_under_load(service):
    # Eight emergencies at once on one replica whose simulated GPU is busy 40 ms a batch: the ones
    # that arrive while a batch runs go into the next one together.
    slice_ = _dicom.ct_slice()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: service.post(slice_, lane="emergency"), range(16)))
    assert [r.status_code for r in answers] == [200] * 16
    sizes = [r.json()["served_by"]["batch_size"] for r in answers]
    assert max(sizes) >= 2 and all(1 <= n <= 8 for n in sizes), sizes


def test_one_url_is_an_haproxy_front_door_over_the_replicas_own_ports(service, cohort):
    """medray's default ingress (medray.cluster.ingress): HAProxy holds the service's one URL and
    forwards to each lane's direct-ingress replicas, which listen on ports of their own."""
    import psutil
    import ray
    from ray.serve.context import _get_global_client

    from workloads.diagnosis.app import lane_apps
    from workloads.diagnosis.local import http_targets

    port = int(service.url.rsplit(":", 1)[1])
    listeners = {c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port}
    assert listeners and {psutil.Process(pid).name() for pid in listeners} == {"haproxy"}, listeners
    assert {int(u.rsplit(":", 1)[1]) for u in http_targets()} == {port}  # what a balancer outside needs
    controller = _get_global_client()._controller
    ports = {lane: {t.port for g in ray.get(controller.get_target_groups.remote(app, from_proxy_manager=True))
                    for t in g.targets} for lane, app in lane_apps().items()}  # what HAProxy forwards to
    assert all(ports.values()) and port not in ports["routine"] | ports["emergency"], ports
    assert not ports["routine"] & ports["emergency"], ports  # each lane has its own replicas
    body, content_type = encode_series(cohort_series(cohort, study=1))
    for lane in ("routine", "emergency"):
        r = service.post(body, content_type, lane=lane)
        assert r.status_code == 200 and r.json()["served_by"]["lane"] == lane, r.text


def test_emergency_lane_answers_while_the_routine_lane_is_saturated(service, cohort):
    body, content_type = encode_series(cohort_series(cohort, study=2))
    stop = threading.Event()
    routine = []

    def load():
        with httpx.Client(base_url=service.url, timeout=60) as client:
            while not stop.is_set():
                r = client.post("/v1/diagnose", content=body, headers={
                    "Authorization": f"Bearer {service.tokens['clinic']}", "Content-Type": content_type})
                routine.append((r.status_code, r.headers.get("retry-after")))

    threads = [threading.Thread(target=load) for _ in range(10)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while not any(s == 503 for s, _ in routine):
            assert time.monotonic() < deadline, f"the routine lane never filled up: {routine[:20]}"
            time.sleep(0.05)
        emergency = [service.post(body, content_type, lane="emergency", timeout=30) for _ in range(5)]
        rejected_meanwhile = sum(s == 503 for s, _ in routine)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert [r.status_code for r in emergency] == [200] * 5, [r.text for r in emergency]
    assert all(r.json()["served_by"]["lane"] == "emergency" for r in emergency)
    assert rejected_meanwhile >= 2  # the routine lane stayed full while emergencies were answered
    assert all(retry == "1" for s, retry in routine if s == 503)
    assert any(s == 200 for s, _ in routine)


def test_hot_swap_to_a_new_version_without_failed_requests(service, cohort):
    v2 = register_seeded(service.root / "registry", seed=2)
    instances = cohort_series(cohort, study=3)
    body, content_type = encode_series(instances)
    seen, stop = [], threading.Event()

    def loop():
        with httpx.Client(base_url=service.url, timeout=60) as client:
            while not stop.is_set():
                r = client.post("/v1/diagnose", content=body, headers={
                    "Authorization": f"Bearer {service.tokens['clinic']}", "Content-Type": content_type})
                seen.append((r.status_code, r.json().get("model"), r.json().get("finding")))

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        while len(seen) < 5:
            time.sleep(0.05)
        swap = service.client.put("/v1/models/active", json={"expert": "CT/CHEST", "model": v2},
                                  headers={"Authorization": f"Bearer {service.tokens['admin']}"})
        assert swap.status_code == 200 and swap.json()["experts"]["CT/CHEST"] == v2
        deadline = time.monotonic() + 30
        while sum(m == v2 for _, m, _ in seen) < 5:
            assert time.monotonic() < deadline, "the new version never answered"
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(60)
    assert [s for s, _, _ in seen] == [200] * len(seen)
    models = [m for _, m, _ in seen]
    switch = models.index(v2)
    assert set(models[:switch]) == {"nodule:1"} and set(models[switch:]) == {v2}
    assert seen[-1][2]["probability"] == pytest.approx(expected_probability(service, v2, instances), abs=1e-5)
    assert seen[-1][2]["probability"] != seen[0][2]["probability"]
    # Both lanes load the new version from their next catalog heartbeat on, traffic or not.
    deadline = time.monotonic() + 30
    while True:
        listing = service.client.get("/v1/models", headers={"Authorization": f"Bearer {service.tokens['admin']}"})
        by_ref = {m["ref"]: m for m in listing.json()["models"]}
        if by_ref[v2]["loaded_replicas"] == {"routine": 1, "emergency": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert by_ref[v2]["loaded_replicas"] == {"routine": 1, "emergency": 1}
    assert by_ref[v2]["active_for"] == ["CT/CHEST"] and by_ref["nodule:1"]["active_for"] == ["CT/*"]


def test_every_request_is_audited_without_phi_and_tampering_is_detected(service, tmp_path):
    audit = service.root / "audit.jsonl"
    report = verify_chain(audit)
    assert report.ok, report
    text = audit.read_text()
    service.assert_no_phi(text)
    ids = {rid for rid in service.request_ids if rid}
    assert ids and all(rid in text for rid in ids)
    statuses = {int(s) for s in re.findall(r'"status":(\d+)', text)}
    assert {200, 400, 401, 403, 413, 415, 422, 503} <= statuses
    # No PHI in any log of the cluster's session either (replicas, proxies, controller).
    logs = ray_internals.logs_dir()
    texts = [p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file()]
    assert any("lane routine loaded model nodule:1" in t for t in texts), "replica logs were not found"
    for t in texts:
        service.assert_no_phi(t)
    lines = text.splitlines(keepends=True)
    tampered = tmp_path / "audit.jsonl"
    tampered.write_text("".join([*lines[:3], lines[3].replace('"status":200', '"status":201'), *lines[4:]]))
    assert not verify_chain(tampered).ok and verify_chain(tampered).line == 4
