"""DICOM networking (DICOM PS3.7 DIMSE, PS3.8 upper layer) with pynetdicom: receive and send instances.

* :class:`StoreSCP`: a Storage SCP (PS3.4 Annex B) and Verification SCP (C-ECHO, PS3.4 Annex A)
  that accepts associations only for the AE titles it serves (others get A-ASSOCIATE-RJ, "called
  AE title not recognised", PS3.8 §9.3.4), hands each stored instance, as its Part 10 bytes, to a
  callback and answers the callback's verdict as a C-STORE status (:data:`STATUS`).
* :class:`SeriesCollector`: groups received instances by (called AE title, study, series) and
  hands a series on once no instance of it arrived for a quiet period, the way a gateway decides
  that a modality finished sending (DICOM itself has no "study complete" message).
* :func:`store_instances`: a Storage SCU, one association that C-STOREs datasets to a peer.

Nothing here logs element values: instances carry PHI.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medray.dicom.codecs import CODECS, decodable
from medray.dicom.quiet import quiet_pydicom, silenced_warnings
from medray.errors import DicomError, MedrayError
from medray.logs import get_logger

__all__ = ["STATUS", "Received", "accepted_syntaxes", "failure_status", "StoreRefused", "StoreSCP", "SeriesCollector",
           "store_instances"]

log = get_logger("dicom.net")

# C-STORE response statuses (DICOM PS3.4 Table B.2-1; PS3.7 Annex C for the general ones).
STATUS = {
    "success": 0x0000,
    "out_of_resources": 0xA700,  # Refused: Out of Resources
    "dataset_mismatch": 0xA900,  # Error: Data Set Does Not Match SOP Class
    "cannot_understand": 0xC000,  # Error: Cannot Understand
    "processing_failure": 0x0110,  # Failure: Processing Failure (PS3.7 C.4.2)
}
# DicomError reasons that mean the bytes were not a usable DICOM dataset at all.
_UNDECODABLE = frozenset({"not_dicom", "truncated"})
# What an instance must carry to be grouped into a series (PS3.3 C.7.2.1, C.7.3.1, C.12.1).
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class StoreRefused(MedrayError):
    """The receiver refuses an instance: ``status`` is the C-STORE status to answer (:data:`STATUS`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Received:
    """One stored instance: the association's AE titles, its Part 10 bytes and its header.

    ``header`` is parsed without the pixel data; its values are PHI (never log them).
    """

    called_aet: str
    calling_aet: str
    data: bytes = field(repr=False)
    header: Dataset = field(repr=False)

    @property
    def series_key(self) -> tuple[str, str, str]:
        """(called AE title, StudyInstanceUID, SeriesInstanceUID): what :class:`SeriesCollector` groups by."""
        return self.called_aet, str(self.header.StudyInstanceUID), str(self.header.SeriesInstanceUID)


def failure_status(reason: str) -> int:
    """The C-STORE status (also a STOW-RS Failure Reason) of a DicomError ``reason``: 0xC000 for
    bytes that are not a usable DICOM dataset, 0xA900 for any other unusable instance."""
    return STATUS["cannot_understand" if reason in _UNDECODABLE else "dataset_mismatch"]


def _header(data: bytes, sop_class: UID) -> Dataset:
    """The header of a Part 10 file, checked against the presentation context's SOP class."""
    try:
        with silenced_warnings():
            header = dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:
        raise StoreRefused(STATUS["cannot_understand"], "the dataset cannot be decoded") from None
    missing = [k for k in _REQUIRED if not str(header.get(k, "") or "").strip()]
    if missing:
        raise StoreRefused(STATUS["dataset_mismatch"], f"the dataset lacks {', '.join(missing)}")
    if UID(str(header.SOPClassUID)) != sop_class:
        raise StoreRefused(STATUS["dataset_mismatch"], "SOPClassUID differs from the presentation context's")
    return header


def accepted_syntaxes() -> list[str]:
    """The transfer syntaxes whose pixel data medray decodes in this process (uncompressed first)."""
    return [syntax for syntax in CODECS if decodable(syntax)]


class StoreSCP:
    """A C-STORE/C-ECHO receiver for the AE titles ``ae_titles`` on ``host:port`` (0: a free port).

    ``on_instance`` is called for each instance in the association's thread; it may raise
    :class:`StoreRefused` (its status is answered) or DicomError (``not_dicom``/``truncated`` ->
    0xC000, any other reason -> 0xA900); any other exception answers 0x0110 and is logged by
    class name only. ``sop_classes``: the storage SOP classes accepted (default: every storage
    class pynetdicom knows). ``transfer_syntaxes`` (default: every one medray decodes here,
    :func:`medray.dicom.codecs.decodable`; Implicit VR Little Endian always, PS3.5 §10.1): a sender
    whose syntax is not among them must transcode, as the negotiation tells it.
    """

    def __init__(self, ae_titles: Collection[str], on_instance: Callable[[Received], None], *,
                 host: str = "127.0.0.1", port: int = 0, sop_classes: Collection[str] | None = None,
                 transfer_syntaxes: Sequence[str] | None = None, max_associations: int = 16) -> None:
        from pynetdicom import AE, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        if not ae_titles or any(not 0 < len(a) <= 16 for a in ae_titles):
            raise ValueError("ae_titles: one or more AE titles of 1 to 16 characters (PS3.5 AE VR)")
        quiet_pydicom()
        self.ae_titles = frozenset(ae_titles)
        self._on_instance = on_instance
        syntaxes = list(transfer_syntaxes) if transfer_syntaxes is not None else accepted_syntaxes()
        if ImplicitVRLittleEndian not in syntaxes:
            syntaxes.append(ImplicitVRLittleEndian)
        self._ae = AE(ae_title=sorted(self.ae_titles)[0])
        self._ae.maximum_associations = max_associations
        self._ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        classes = sop_classes if sop_classes is not None else [c.abstract_syntax for c in StoragePresentationContexts]
        for sop_class in classes:
            self._ae.add_supported_context(sop_class, syntaxes)
        handlers = [(evt.EVT_REQUESTED, self._requested), (evt.EVT_C_ECHO, lambda event: STATUS["success"]),
                    (evt.EVT_C_STORE, self._store)]
        self._server = self._ae.start_server((host, port), block=False, evt_handlers=handlers)
        self.host, self.port = self._server.server_address[:2]

    def _requested(self, event: object) -> None:
        assoc = event.assoc  # type: ignore[attr-defined]
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        if called not in self.ae_titles:
            # A-ASSOCIATE-RJ: rejected-permanent, by the service user, called AE title not recognised.
            assoc.acse.send_reject(0x01, 0x01, 0x07)
            assoc.kill()  # as pynetdicom's own rejections do: lets the DUL send the A-ASSOCIATE-RJ first

    def _store(self, event: object) -> int:
        assoc = event.assoc  # type: ignore[attr-defined]
        try:
            data = event.encoded_dataset(include_meta=True)  # type: ignore[attr-defined]
            header = _header(data, UID(event.context.abstract_syntax))  # type: ignore[attr-defined]
            self._on_instance(Received(called_aet=str(assoc.requestor.primitive.called_ae_title).strip(),
                                       calling_aet=str(assoc.requestor.ae_title).strip(), data=data, header=header))
        except StoreRefused as e:
            return e.status
        except DicomError as e:
            return failure_status(e.reason)
        except Exception as e:  # a bug in the receiver must not end the association thread badly
            log.error("C-STORE handler failed: %s", type(e).__name__)
            return STATUS["processing_failure"]
        return STATUS["success"]

    def stop(self) -> None:
        """Stop listening and end the associations in progress."""
        self._server.shutdown()


@dataclass
class _Pending:
    instances: list[Received]
    last: float


class SeriesCollector:
    """Collects :class:`Received` instances per series and calls ``on_series(instances)`` once a series
    had no new instance for ``quiet_s`` seconds (in a thread of its own; one series at a time).

    :meth:`add` refuses (:class:`StoreRefused`, 0xA700) an instance beyond ``max_instances`` in a
    series or ``max_series`` series waiting: the sender retries later, nothing is dropped silently.
    A repeated SOPInstanceUID replaces the earlier copy (a modality resending after a failure).
    """

    def __init__(self, on_series: Callable[[list[Received]], None], *, quiet_s: float = 2.0,
                 max_instances: int = 2000, max_series: int = 64) -> None:
        if quiet_s <= 0:
            raise ValueError("quiet_s must be > 0 seconds")
        self._on_series, self.quiet_s = on_series, quiet_s
        self._max_instances, self._max_series = max_instances, max_series
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="series-collector", daemon=True)
        self._thread.start()

    def add(self, instance: Received) -> None:
        """Keep ``instance`` with its series (resets that series' quiet period)."""
        key = instance.series_key
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                if len(self._pending) >= self._max_series:
                    raise StoreRefused(STATUS["out_of_resources"], f"{self._max_series} series are waiting")
                pending = self._pending[key] = _Pending([], time.monotonic())
            uid = str(instance.header.SOPInstanceUID)
            kept = [i for i in pending.instances if str(i.header.SOPInstanceUID) != uid]
            if len(kept) >= self._max_instances:
                raise StoreRefused(STATUS["out_of_resources"], f"a series may hold {self._max_instances} instances")
            pending.instances = [*kept, instance]
            pending.last = time.monotonic()

    def waiting(self) -> int:
        """Series received and not handed on yet."""
        with self._lock:
            return len(self._pending)

    def _due(self) -> list[list[Received]]:
        now = time.monotonic()
        with self._lock:
            keys = [k for k, p in self._pending.items() if now - p.last >= self.quiet_s]
            return [self._pending.pop(k).instances for k in keys]

    def _run(self) -> None:
        while not self._stop.wait(min(0.1, self.quiet_s / 4)):
            for instances in self._due():
                try:
                    self._on_series(instances)
                except Exception as e:
                    log.error("series handler failed: %s", type(e).__name__)

    def stop(self) -> None:
        """Stop handing series on (those still waiting are dropped: stop the receiver first)."""
        self._stop.set()
        self._thread.join(timeout=5)


def _syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)) if meta is not None else ExplicitVRLittleEndian


def store_instances(datasets: Sequence[Dataset], *, host: str, port: int, called_aet: str,
                    calling_aet: str = "MEDRAY", timeout_s: float = 30.0) -> list[int]:
    """C-STORE ``datasets`` to ``called_aet`` at ``host:port`` in one association; their statuses in order.

    Raises DicomError ``association_failed`` when the peer refuses or cannot be reached.
    """
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    # One context per (SOP class, the dataset's own transfer syntax): compressed data is sent as
    # encoded, never transcoded; uncompressed data may go as Implicit VR where the peer prefers it.
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), _syntax(ds)) for ds in datasets}):
        also = [ImplicitVRLittleEndian] if syntax == ExplicitVRLittleEndian else []
        ae.add_requested_context(sop_class, [syntax, *also])
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise DicomError("association_failed", f"{called_aet} at {host}:{port} refused or did not answer the association")
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else STATUS["processing_failure"])
        return statuses
    finally:
        assoc.release()
