"""The diagnosis service's parts without a cluster: bodies, config, routing, FHIR, the pipeline."""

import numpy as np
import pytest
import torch
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

from medray.dicom.multipart import BodyError, encode_series, split_body
from medray.dicom.volume import REASONS, read_instance, volume_from_datasets
from medray.errors import DicomError, RegistryError
from medray.imaging.normalize import InputSpec, normalize_volume
from medray.models.findings import finding_spec
from medray.models.registry import register
from tests.workloads.diagnosis._dicom import ct_slice, series
from tests.workloads.diagnosis.conftest import register_seeded
from workloads.diagnosis.api import route_expert
from workloads.diagnosis.app import deployment_options
from workloads.diagnosis.config import REASON_STATUS, DiagnosisArgs
from workloads.diagnosis.fhir import diagnostic_report
from workloads.diagnosis.pipeline import load_model, predict, prepare, routing_fields

PATHS = dict(registry="/srv/registry", tokens="/srv/tokens.json", audit_log="/srv/audit.jsonl")


def test_multipart_related_round_trip_and_single_instance():
    instances = series(3)
    body, content_type = encode_series(instances)
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert split_body(content_type, body) == instances
    assert split_body("application/dicom", instances[0]) == instances[:1]


@pytest.mark.parametrize("content_type, body, status", [
    ("text/plain", b"hello", 415),
    (None, b"hello", 415),
    ('multipart/related; type="image/jpeg"; boundary=x', b"", 415),
    ('multipart/related; type="application/dicom"', b"--x\r\n\r\nabc\r\n--x--", 400),
    ('multipart/related; type="application/dicom"; boundary=x', b"--x\r\n\r\nabc\r\n--x\r\n\r\ndef", 400),
    ('multipart/related; type="application/dicom"; boundary=x',
     b"--x\r\nContent-Type: text/plain\r\n\r\nabc\r\n--x--\r\n", 415),
])
def test_unusable_bodies_are_refused_with_a_status(content_type, body, status):
    with pytest.raises(BodyError) as e:
        split_body(content_type, body)
    assert e.value.status == status


def test_every_dicom_rejection_reason_has_a_4xx_status():
    assert set(REASON_STATUS) == set(REASONS)
    assert all(400 <= s < 500 for s in REASON_STATUS.values())


@pytest.mark.parametrize("change, message", [
    ({"registry": "relative/dir"}, "relative"),
    ({"experts": {"ct/chest": "nodule:1"}}, "MODALITY/BODYPART"),
    ({"experts": {"CT/CHEST": "Nodule!"}}, "bad model name"),
    ({"lanes": {"routine": {}}}, "exactly"),
    ({"lanes": {"routine": {}, "emergency": {"min_replicas": 0}}}, "reserved capacity"),
    ({"lanes": {"routine": {"min_replicas": 3, "max_replicas": 2}, "emergency": {}}}, "min_replicas"),
    ({"max_batch_sise": 8}, "Extra inputs"),
])
def test_bad_arguments_fail_the_deploy_with_a_reason(change, message):
    with pytest.raises(ValidationError, match=message):
        DiagnosisArgs.model_validate({**PATHS, **change})


def test_home_relative_paths_expand():
    args = DiagnosisArgs.model_validate({**PATHS, "registry": "~/.medray/registry"})
    assert args.registry.endswith("/.medray/registry") and not args.registry.startswith("~")


def test_expert_routing_prefers_the_exact_body_part():
    experts = {"CT/CHEST": "nodule:2", "CT/*": "nodule:1"}
    assert route_expert(experts, "CT", "CHEST") == ("CT/CHEST", "nodule:2")
    assert route_expert(experts, "CT", "") == ("CT/*", "nodule:1")
    assert route_expert(experts, "MR", "CHEST") is None
    assert route_expert({"CT/CHEST": "nodule:2"}, "CT", "HEAD") is None


def test_replicas_are_placed_on_inference_nodes_with_training_nodes_as_fallback(node_types):
    roles = {t.name: t.role for t in node_types}
    options = deployment_options(DiagnosisArgs.model_validate(PATHS))
    for name in ("ingress", "emergency"):
        opts = options[name]["ray_actor_options"]
        # The cheapest inference type first, then the others in cost order, training nodes last.
        assert opts["label_selector"]["medray.io/node-type"] == "infer-t4"
        fallbacks = [roles[f["label_selector"]["medray.io/node-type"]] for f in opts["fallback_strategy"]]
        assert fallbacks == ["infer", "train", "train"]
    assert options["ingress"]["ray_actor_options"]["num_gpus"] == 0.25
    # Serve admits more than the routine limit, so that emergencies never queue in the proxy.
    assert options["ingress"]["max_ongoing_requests"] > 32 + 128


def _result(label="nodule_suspected", patient_ref="a1b2c3", finding="lung-nodule", body_part="CHEST"):
    return {
        "finding": {"name": finding, "probability": 0.81234, "label": label, "threshold": 0.5},
        "model": "nodule:2", "expert": f"CT/{body_part}", "lane": "routine",
        "study": {"study_ref": "2.25.123", "series_ref": "2.25.456", "patient_ref": patient_ref,
                  "modality": "CT", "body_part": body_part, "instances": 20},
    }


@pytest.mark.parametrize("label", ["nodule_suspected", "no_nodule_detected"])
def test_fhir_report_validates_as_r4_diagnostic_report(label):
    report = diagnostic_report(_result(label), report_id="abc123", issued="2026-01-02T03:04:05+00:00")
    parsed = DiagnosticReport.model_validate(report)  # raises on any structural error
    assert parsed.status == "preliminary" and parsed.subject.reference == "Patient/a1b2c3"
    assert float(parsed.contained[0].valueQuantity.value) == pytest.approx(0.81234)
    assert ("conclusionCode" in report) == (label == "nodule_suspected")
    no_patient = diagnostic_report(_result(patient_ref=None), report_id="x", issued="2026-01-02T03:04:05+00:00")
    assert "subject" not in DiagnosticReport.model_validate(no_patient).model_dump(exclude_none=True)


@pytest.mark.parametrize("finding, body_part, positive, study, site, code", [
    ("lung-nodule", "CHEST", "nodule_suspected", "24627-2", "39607008", "R91.1"),
    ("intracranial-hemorrhage", "HEAD", "hemorrhage_suspected", "24725-4", "12738006", "I62.9"),
])
def test_each_experts_report_carries_its_own_study_code_body_site_and_finding(finding, body_part, positive,
                                                                             study, site, code):
    report = diagnostic_report(_result(positive, finding=finding, body_part=body_part), report_id="r",
                               issued="2026-01-02T03:04:05+00:00")
    parsed = DiagnosticReport.model_validate(report)
    assert [c.code for c in parsed.code.coding] == [study]
    assert [c.code for c in parsed.contained[0].bodySite.coding] == [site]
    assert [c.code for c in parsed.conclusionCode[0].coding] == [code]
    assert report["conclusion"].startswith(finding_spec(finding).title + " suspected")
    negative = diagnostic_report(_result(finding_spec(finding).negative, finding=finding, body_part=body_part),
                                 report_id="r", issued="2026-01-02T03:04:05+00:00")
    assert "conclusionCode" not in negative and "not detected" in negative["conclusion"]


def test_a_model_registered_with_an_unknown_finding_is_refused(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    with pytest.raises(RegistryError, match="unknown finding 'spleen'.*intracranial-hemorrhage"):
        register(tmp_path / "registry", "x", weights, input_spec=InputSpec(), finding="spleen")


def test_routing_fields_come_from_the_parsed_first_instance_which_prepare_reuses(tmp_path):
    data = ct_slice(modality="CT", body_part="CHEST ")
    first = read_instance(data)
    assert routing_fields(first) == ("CT", "CHEST")
    with pytest.raises(DicomError) as e:
        read_instance(b"Quixby^Zelphine MRN-CANARY-90210" * 10)
    assert e.value.reason == "not_dicom" and "Quixby" not in str(e.value)
    (tmp_path / "registry").mkdir()
    model = load_model(tmp_path / "registry", register_seeded(tmp_path / "registry", seed=5))
    again = prepare([data], model.spec, max_pixels=1 << 24)
    reused = prepare([b"not parsed again"], model.spec, max_pixels=1 << 24, first=first)
    assert np.array_equal(again.x, reused.x) and reused.series_uid == again.series_uid


def test_pipeline_runs_the_medray_normalisation_and_is_deterministic(tmp_path):
    (tmp_path / "registry").mkdir()
    ref = register_seeded(tmp_path / "registry", seed=5)
    model = load_model(tmp_path / "registry", ref)
    instances = series(4)
    study = prepare(instances, model.spec, max_pixels=10**6)
    volume = volume_from_datasets([read_instance(d) for d in instances])
    np.testing.assert_array_equal(study.x, volume.normalized(model.spec))
    # The same input as normalising the whole volume in HU, up to float32 rounding.
    np.testing.assert_allclose(study.x, normalize_volume(volume.hu, volume.spacing_mm, model.spec), atol=1e-6)
    probs = predict(model, np.stack([study.x, study.x]))
    with torch.inference_mode():
        expected = torch.sigmoid(model.module(torch.from_numpy(study.x)[None, None])).item()
    assert probs == pytest.approx([expected, expected], abs=1e-6) and 0 < probs[0] < 1
    with pytest.raises(DicomError) as e:
        prepare(instances, model.spec, max_pixels=100)
    assert e.value.reason == "too_large"


def test_a_simulated_gpu_batch_costs_a_fixed_share_once_and_the_rest_per_volume():
    from workloads.diagnosis.deployments import simulated_batch_s

    assert simulated_batch_s(300, 0.8, 1) == pytest.approx(0.3)
    assert simulated_batch_s(300, 0.8, 8) == pytest.approx(0.3 * (0.8 + 0.2 * 8))
    assert simulated_batch_s(300, 0.0, 8) == pytest.approx(2.4)  # share 0: no batching gain


def test_studies_queued_past_the_lane_timeout_are_not_run():
    from workloads.diagnosis.deployments import in_time

    assert in_time([0.0, 5.0, 9.5], now=10.0, timeout_s=1.0) == [2]
    assert in_time([], now=10.0, timeout_s=1.0) == []
