"""medray.dicom.net over real DICOM associations on 127.0.0.1 (pynetdicom on both sides), no cluster."""

from __future__ import annotations

import time

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from medray.dicom.net import STATUS, Received, SeriesCollector, StoreRefused, StoreSCP, store_instances
from medray.errors import DicomError


def ct(instance: int = 1, series: str = "1.2.3.4.5", **changes) -> pydicom.Dataset:
    """pydicom's real CT slice as instance ``instance`` of ``series``."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series, f"{series}.{instance}"
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


@pytest.fixture
def scp():
    received: list[Received] = []
    verdict: list[Exception] = []

    def on_instance(instance: Received) -> None:
        if verdict:
            raise verdict[0]
        received.append(instance)

    server = StoreSCP(["MEDRAY", "MEDRAY_ER"], on_instance)
    yield server, received, verdict
    server.stop()


def _associate(server, called="MEDRAY"):
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate(server.host, server.port, ae_title=called)


def test_echo_and_store_hand_the_instance_with_its_ae_titles(scp):
    server, received, _ = scp
    assoc = _associate(server, "MEDRAY_ER")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == STATUS["success"]
    assert assoc.send_c_store(ct(1)).Status == STATUS["success"]
    assoc.release()
    (got,) = received
    assert (got.called_aet, got.calling_aet) == ("MEDRAY_ER", "MODALITY")
    assert got.series_key == ("MEDRAY_ER", str(ct().StudyInstanceUID), "1.2.3.4.5")
    assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(got.data)).pixel_array.shape == (128, 128)
    assert "PixelData" not in got.header


def test_an_unknown_called_ae_title_is_rejected_at_association(scp):
    server, received, _ = scp
    assoc = _associate(server, "SOMEONE_ELSE")
    assert assoc.is_rejected and not assoc.is_established
    # PS3.8 9.3.4: rejected-permanent, service user, called AE title not recognised.
    assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.result_source,
            assoc.acceptor.primitive.diagnostic) == (0x01, 0x01, 0x07)
    assert not received


def test_bad_instances_get_dicom_statuses_and_the_association_goes_on(scp):
    server, received, verdict = scp
    assoc = _associate(server)
    assert assoc.send_c_store(ct(1, StudyInstanceUID=None)).Status == STATUS["dataset_mismatch"]
    verdict.append(DicomError("not_dicom", "x"))
    assert assoc.send_c_store(ct(2)).Status == STATUS["cannot_understand"]
    verdict[0] = DicomError("no_pixel_data", "x")
    assert assoc.send_c_store(ct(3)).Status == STATUS["dataset_mismatch"]
    verdict[0] = StoreRefused(STATUS["out_of_resources"], "full")
    assert assoc.send_c_store(ct(4)).Status == STATUS["out_of_resources"]
    verdict[0] = KeyError("a bug")
    assert assoc.send_c_store(ct(5)).Status == STATUS["processing_failure"]
    verdict.clear()
    assert assoc.send_c_store(ct(6)).Status == STATUS["success"]
    assoc.release()
    assert [str(r.header.SOPInstanceUID) for r in received] == ["1.2.3.4.5.6"]


def test_store_instances_reports_statuses_and_a_refused_association(scp):
    server, received, _ = scp
    assert store_instances([ct(1), ct(2, StudyInstanceUID=None)], host=server.host, port=server.port,
                           called_aet="MEDRAY") == [STATUS["success"], STATUS["dataset_mismatch"]]
    assert len(received) == 1
    with pytest.raises(DicomError, match="association_failed"):
        store_instances([ct(1)], host=server.host, port=server.port, called_aet="NOBODY")


def _received(instance: int, series: str = "1.2.3.4.5", called: str = "MEDRAY") -> Received:
    header = ct(instance, series)
    return Received(called_aet=called, calling_aet="MODALITY", data=b"", header=header)


def test_the_collector_hands_a_series_on_after_its_quiet_period():
    done: list[tuple[float, list[str]]] = []
    collector = SeriesCollector(lambda xs: done.append((time.monotonic(), [str(x.header.SOPInstanceUID) for x in xs])),
                                quiet_s=0.3)
    try:
        start = time.monotonic()
        for i in (1, 2, 2, 3):  # instance 2 resent: kept once
            collector.add(_received(i))
            time.sleep(0.1)
        collector.add(_received(1, series="9.9"))
        assert not done and collector.waiting() == 2
        deadline = time.monotonic() + 3
        while len(done) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        by_series = {uids[0].rsplit(".", 1)[0]: (t, uids) for t, uids in done}
        assert by_series["1.2.3.4.5"][1] == ["1.2.3.4.5.1", "1.2.3.4.5.2", "1.2.3.4.5.3"]
        assert by_series["9.9"][1] == ["9.9.1"]
        # Not before 0.3 s of quiet after the series' last instance (sent at ~0.3 s).
        assert by_series["1.2.3.4.5"][0] - start >= 0.6
        assert collector.waiting() == 0
    finally:
        collector.stop()


def test_the_collector_refuses_beyond_its_bounds():
    collector = SeriesCollector(lambda xs: None, quiet_s=30, max_instances=2, max_series=2)
    try:
        collector.add(_received(1))
        collector.add(_received(2))
        with pytest.raises(StoreRefused) as e:
            collector.add(_received(3))
        assert e.value.status == STATUS["out_of_resources"]
        collector.add(_received(2))  # a resend of a kept instance is not a new one
        collector.add(_received(1, series="9.9"))
        with pytest.raises(StoreRefused):
            collector.add(_received(1, series="9.8"))
        with pytest.raises(ValueError):
            SeriesCollector(lambda xs: None, quiet_s=0)
    finally:
        collector.stop()


def test_scp_settings_are_checked():
    with pytest.raises(ValueError, match="AE title"):
        StoreSCP([], lambda r: None)
    with pytest.raises(ValueError, match="AE title"):
        StoreSCP(["A" * 17], lambda r: None)
