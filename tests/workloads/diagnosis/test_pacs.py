"""The hospital round trip on the shared cluster: a real Orthanc PACS, the DICOM gateway as a Ray actor,
the diagnosis service on Serve. C-STORE a CT in, the finding comes back into Orthanc as an SR,
found there by QIDO-RS and read back by WADO-RS (dicomweb-client)."""

import io
import json
import time

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from medray.dicom.dicomweb import pull_series
from medray.dicom.multipart import encode_series
from medray.dicom.net import STATUS, store_instances
from medray.errors import ConfigError, DicomError
from medray.security.tokens import add_client
from tests.workloads.diagnosis import _dicom
from workloads.diagnosis.gateway import DicomGateway, GatewayConfig, start_gateway
from workloads.diagnosis.local import run_local, stop_local

QUIET_S = 0.5


def _datasets(instances):
    return [pydicom.dcmread(io.BytesIO(b)) for b in instances]


@pytest.fixture(scope="module")
def pacs_service(ray_cluster, service_dir):
    """The service, one replica per lane, and the gateway's token file (scopes clinic, emergency)."""
    root, _ = service_dir
    token_file = root / "gateway.token"
    token_file.write_text(add_client(root / "tokens.json", "dicom-gateway", ["clinic", "emergency"]))
    token_file.chmod(0o600)
    url = run_local({
        "registry": str(root / "registry"), "tokens": str(root / "tokens.json"),
        "audit_log": str(root / "pacs-audit.jsonl"), "key_file": str(root / "deid.key"),
        "experts": {"CT/CHEST": "nodule:latest", "CT/HEAD": "ich:latest"},
        "lanes": {"routine": {"min_replicas": 1, "max_replicas": 1}, "emergency": {"min_replicas": 1, "max_replicas": 1}},
    })
    yield url, token_file, root
    stop_local()


@pytest.fixture(scope="module")
def gateway(pacs_service, orthanc):
    """The gateway in front of the service (MEDRAY -> routine, MEDRAY_ER -> emergency), SRs to Orthanc."""
    import ray

    url, token_file, root = pacs_service
    actor = start_gateway({
        "routes": {"MEDRAY": "routine", "MEDRAY_ER": "emergency"}, "service_url": url,
        "token_file": str(token_file), "host": "127.0.0.1", "port": 0, "quiet_s": QUIET_S,
        "max_instance_pixels": 512 * 512,
        "archive": {"host": "127.0.0.1", "port": orthanc.dicom_port, "aet": orthanc.aet},
    }, name="test-dicom-gateway", num_cpus=0)
    host, port = ray.get(actor.address.remote())
    yield actor, host, port, root
    ray.get(actor.stop.remote())
    ray.kill(actor)


def _outcomes(actor, n, timeout_s=60):
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outcomes = ray.get(actor.outcomes.remote())
        if len(outcomes) >= n:
            return outcomes
        time.sleep(0.1)
    raise AssertionError(f"the gateway handed on {len(outcomes)} series, not {n}, within {timeout_s} s")


def test_orthanc_answers_echo_and_dicomweb(orthanc):
    ae = AE(ae_title="MEDRAY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    assert DICOMwebClient(orthanc.dicomweb_url).search_for_studies(search_filters={"PatientID": "NOBODY"}) == []


def test_a_ct_stored_into_medray_comes_back_to_the_pacs_as_an_sr(gateway, orthanc):
    actor, host, port, root = gateway
    before = len(_outcomes(actor, 0))
    series = _datasets(_dicom.series(20, body_part="CHEST"))
    assert store_instances(series, host=host, port=port, called_aet="MEDRAY", calling_aet="CT_SCANNER") == [0] * 20
    (outcome,) = _outcomes(actor, before + 1)[before:]
    assert (outcome["status"], outcome["lane"], outcome["instances"], outcome["model"]) == (200, "routine", 20, "nodule:1")
    assert outcome["sr_status"] == STATUS["success"]
    # The gateway's record is PHI-free (pseudonyms only); the service audited the gateway as a client.
    assert not [p for p in _dicom.PHI if p in json.dumps(outcome)]
    audit = [json.loads(line) for line in (root / "pacs-audit.jsonl").read_text().splitlines()]
    assert {"client": "dicom-gateway", "request_id": outcome["request_id"]}.items() <= audit[-1].items()

    web = DICOMwebClient(orthanc.dicomweb_url)
    deadline = time.monotonic() + 30
    found = []
    while not found and time.monotonic() < deadline:
        found = web.search_for_instances(study_instance_uid=_dicom.STUDY_UID, search_filters={"Modality": "SR"})
    found_s = time.time() - outcome["completed_at"]
    (instance,) = found
    sr = web.retrieve_instance(_dicom.STUDY_UID, instance["0020000E"]["Value"][0], instance["00080018"]["Value"][0])
    assert sr.SOPInstanceUID == outcome["sr_uid"] and sr.PatientID == _dicom.PATIENT_ID
    referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == _dicom.SERIES_UID and len(referenced.ReferencedSOPSequence) == 20

    import highdicom as hd

    (group,) = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
    present = group.get_qualitative_evaluations()[0].value.meaning == "Present"
    assert present == (outcome["finding"] == "nodule_suspected")
    algorithm = {i.ConceptNameCodeSequence[0].CodeMeaning: i.get("TextValue") for i in group[0].ContentSequence}
    assert (algorithm["Algorithm Name"], algorithm["Algorithm Version"]) == ("nodule", "1")
    # Issue 19's goal: the SR is in the PACS within 5 s of the series completing (quiet period over).
    assert found_s <= 5.0, f"SR found {found_s:.1f} s after the series completed"


def test_the_emergency_ae_title_routes_to_the_emergency_lane(gateway):
    actor, host, port, *_ = gateway
    before = len(_outcomes(actor, 0))
    head = _datasets(_dicom.series(4, body_part="HEAD"))
    for ds in head:
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".9"
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    assert store_instances(head, host=host, port=port, called_aet="MEDRAY_ER") == [0] * 4
    (outcome,) = _outcomes(actor, before + 1)[before:]
    assert (outcome["status"], outcome["lane"], outcome["model"]) == (200, "emergency", "ich:1")


def test_bad_input_gets_dicom_statuses_and_the_gateway_goes_on(gateway):
    actor, host, port, *_ = gateway
    before = len(_outcomes(actor, 0))
    no_pixels = pydicom.dcmread(io.BytesIO(_dicom.ct_slice(drop_pixels=True, instance=50)))
    # Over the gateway's max_instance_pixels (512 x 512), refused before anything is decoded.
    too_large = pydicom.dcmread(io.BytesIO(_dicom.ct_slice(rows=1024, columns=1024, instance=51)))
    assert store_instances([no_pixels, too_large], host=host, port=port, called_aet="MEDRAY") == [
        STATUS["dataset_mismatch"], STATUS["dataset_mismatch"]]
    with pytest.raises(DicomError, match="association_failed"):
        store_instances(_datasets(_dicom.series(1)), host=host, port=port, called_aet="NOT_MEDRAY")
    # A series no expert serves: accepted by DICOM, refused by the service, recorded, no SR.
    mr = _datasets(_dicom.series(2, modality="MR"))
    for ds in mr:
        ds.SeriesInstanceUID, ds.SOPInstanceUID = ds.SeriesInstanceUID + ".7", ds.SOPInstanceUID + ".7"
    assert store_instances(mr, host=host, port=port, called_aet="MEDRAY") == [0, 0]
    (outcome,) = _outcomes(actor, before + 1)[before:]
    assert (outcome["status"], outcome["reason"]) == (422, "unsupported_modality") and "sr_uid" not in outcome


def test_stow_rs_answers_the_store_instances_response(pacs_service):
    url, token_file, _ = pacs_service
    token = token_file.read_text()
    auth = {"Authorization": f"Bearer {token}"}
    series = _datasets(_dicom.series(4, body_part="CHEST"))
    answer = DICOMwebClient(f"{url}/dicomweb", headers=auth).store_instances(series)
    assert [r.ReferencedSOPInstanceUID for r in answer.ReferencedSOPSequence] == [ds.SOPInstanceUID for ds in series]
    assert {r.ReferencedSOPClassUID for r in answer.ReferencedSOPSequence} == {pydicom.uid.CTImageStorage}
    assert "FailedSOPSequence" not in answer
    head = _datasets(_dicom.series(2, body_part="HEAD"))
    assert len(DICOMwebClient(f"{url}/emergency/dicomweb", headers=auth).store_instances(head).ReferencedSOPSequence) == 2

    # A series that cannot be diagnosed: 409, every instance failed with its C-STORE status.
    body, content_type = encode_series([_dicom.ct_slice(drop_pixels=True), _dicom.ct_slice(6.0, instance=2)])
    r = httpx.post(f"{url}/dicomweb/studies", content=body, headers={**auth, "Content-Type": content_type,
                                                                        "Accept": "application/dicom+json"})
    assert (r.status_code, r.headers["content-type"]) == (409, "application/dicom+json")
    failed = pydicom.Dataset.from_json(r.json()).FailedSOPSequence
    assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in failed] == [
        (f"{_dicom.SERIES_UID}.1", STATUS["dataset_mismatch"]), (f"{_dicom.SERIES_UID}.2", STATUS["dataset_mismatch"])]
    # Without a token: the service's own 401, as on every route.
    assert httpx.post(f"{url}/dicomweb/studies", content=body, headers={"Content-Type": content_type}).status_code == 401


def test_series_pulled_from_the_archive_are_the_bytes_it_was_sent(orthanc, cohort, tmp_path):
    files = sorted((cohort / "dicom" / "study_0001" / "series_01").glob("*.dcm"))
    body, content_type = encode_series([f.read_bytes() for f in files])
    stored = httpx.post(f"{orthanc.dicomweb_url}/studies", content=body,
                        headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    assert stored.status_code == 200
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    (folder,) = pull_series(orthanc.dicomweb_url, tmp_path / "pulled", filters={"StudyInstanceUID": study, "Modality": "CT"})
    assert sorted(p.read_bytes() for p in folder.glob("*.dcm")) == sorted(f.read_bytes() for f in files)
    assert not [p for p in folder.rglob("*") if study in p.name]  # numbered files, no UIDs in names
    assert pull_series(orthanc.dicomweb_url, tmp_path / "none", filters={"StudyInstanceUID": study, "Modality": "MR"}) == []
    with pytest.raises(DicomError, match="archive_unavailable"):
        pull_series(f"{orthanc.url}/no-such-root", tmp_path / "x", filters={"Modality": "CT"})


def test_gateway_settings_are_checked(tmp_path):
    base = {"routes": {"MEDRAY": "routine"}, "service_url": "http://127.0.0.1:1", "token_file": str(tmp_path / "t")}
    for routes, message in (({}, "at least one AE title"), ({"MEDRAY": "urgent"}, "unknown lane"),
                            ({"A" * 17: "routine"}, "AE title"), ({" MEDRAY": "routine"}, "AE title")):
        with pytest.raises(ValueError, match=message):
            GatewayConfig.model_validate({**base, "routes": routes})
    with pytest.raises(ValueError, match="extra"):
        GatewayConfig.model_validate({**base, "quiet": 1})
    with pytest.raises(ConfigError, match="cannot be read.*medray token create"):
        DicomGateway(base)
    (tmp_path / "t").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        DicomGateway(base)
