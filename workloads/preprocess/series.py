"""The DICOM pipeline's work on files and series: plain functions that Ray Data tasks call.

Two steps, so that pixel data never travels through the object store and no global shuffle runs:

1. :func:`scan_file` reads the start of a file (:mod:`workloads.preprocess.sniff`, or pydicom
   up to Pixel Data) and returns the pseudonymous study and series UIDs that group it, or a
   quarantine record.
2. :func:`process_series` reads one series' headers, validates every instance and checks that
   the profile can clean it, orders them by geometry, normalises the volume
   (:meth:`medray.dicom_series.Volume.normalized`: Hounsfield units, resampling and window,
   decoding only the slices the output needs), de-identifies the header it keeps (the first
   slice's) and writes ``volumes/<pseudonymous series UID>.parquet``. The other instances'
   headers are dropped unwritten, so they are checked but not cleaned.

Policy for damaged series: when any instance of a series is refused, the whole series is
quarantined (a partial volume would be silently wrong): the bad files with their own reason, the
others with ``series_incomplete``. No message carries a value from a file.
"""

from __future__ import annotations

import errno
import json
import logging
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from medray.deid import DEID_REASONS, DeidOptions, check_deidentifiable, deidentify
from medray.dicom_parse import get_value
from medray.dicom_series import DEFAULT_MAX_PIXELS, REASONS, read_instance, volume_from_datasets
from medray.errors import DicomError
from medray.imaging import InputSpec
from medray.pseudonym import pseudo_uid
from medray.safe_harbor import age_group
from medray.shards import VOLUMES_DIR, VolumeRecord, build_table, window_name, write_shard
from workloads.preprocess.runs import Quarantined
from workloads.preprocess.sniff import sniff_series

__all__ = [
    "PIPELINE_REASONS",
    "QUARANTINE_REASONS",
    "DicomOptions",
    "Scanned",
    "SeriesResult",
    "scan_file",
    "process_series",
    "quiet_pydicom",
    "shard_path",
]

# Reasons of this pipeline, beyond those of medray.dicom_series and medray.deid.
PIPELINE_REASONS: tuple[str, ...] = ("unreadable", "missing_uid", "series_incomplete", "internal_error")
QUARANTINE_REASONS: tuple[str, ...] = REASONS + DEID_REASONS + PIPELINE_REASONS

_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E
_HEADER_BULK_BYTES = 1024  # binary values larger than this are left out of the header JSON


@dataclass(frozen=True)
class DicomOptions:
    """How the DICOM pipeline normalises and de-identifies.

    ``spec`` sets window, spacing and shape (``window=None`` keeps raw HU); ``concurrency`` caps
    the parallel tasks (default: the CPUs of the running prep nodes); ``resume`` skips series
    whose shard already exists.
    """

    spec: InputSpec = field(default_factory=InputSpec)
    deid: DeidOptions = field(default_factory=DeidOptions)
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_modalities: tuple[str, ...] = ("CT",)
    concurrency: int | None = None
    resume: bool = False

    def to_dict(self) -> dict:
        """The options that shape the output (recorded in the manifest, compared on resume)."""
        return {
            "spec": self.spec.to_dict(),
            "retain_dates": self.deid.retain_dates,
            "retain_patient_characteristics": self.deid.retain_patient_characteristics,
            "max_pixels": self.max_pixels,
            "allow_modalities": list(self.allow_modalities),
        }


@dataclass(frozen=True)
class Scanned:
    """A file's group (pseudonymous study and series UIDs), or why it was refused."""

    path: str
    study_uid: str | None = None
    series_uid: str | None = None
    quarantined: Quarantined | None = None


@dataclass(frozen=True)
class SeriesResult:
    """What :func:`process_series` did with one series (no PHI).

    ``seconds``: wall time per step (parse: reading and checking the headers; deid, volume,
    normalise: decoding the pixel data the output needs; header, write) and the CPU time of the
    whole series (``cpu``).
    """

    series_uid: str
    written: bool
    n_instances: int
    quarantined: tuple[Quarantined, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)


def quiet_pydicom() -> None:
    """Stop pydicom logging in this process: its warnings quote element values (PHI)."""
    logging.getLogger("pydicom").propagate = False


def shard_path(out: Path, series_uid: str) -> Path:
    """Where a series' shard goes: named by its pseudonymous UID only."""
    return out / VOLUMES_DIR / f"{series_uid}.parquet"


def _refusal(path: str, root: Path) -> Quarantined:
    """The precise reason a file cannot be grouped, from the full validation (slow path)."""
    try:
        read_instance(root / path)
    except DicomError as e:
        return Quarantined(path, e.reason, e.message)
    except OSError as e:
        return _unreadable(path, e)
    return Quarantined(path, "missing_uid", "the instance has no StudyInstanceUID or "
                       "SeriesInstanceUID, so it cannot be grouped into a series: re-export it")


def _unreadable(path: str, e: OSError) -> Quarantined:
    # The OSError's own text names the path: only its error code is kept.
    code = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
    return Quarantined(path, "unreadable", f"the file cannot be read ({code}): check its permissions")


def scan_file(root: Path, path: str, key: bytes) -> Scanned:
    """Group one file by its pseudonymous study/series UIDs, reading its header only."""
    uids = sniff_series(root / path)
    if uids is None:  # not the common encoding, or not sure: let pydicom read the header
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(root / path, stop_before_pixels=True,
                                     specific_tags=[_STUDY_UID, _SERIES_UID])
                uids = tuple(str(ds[t].value or "").strip() if t in ds else ""
                             for t in (_STUDY_UID, _SERIES_UID))
        except OSError as e:
            return Scanned(path, quarantined=_unreadable(path, e))
        except Exception:  # broad on purpose: malformed headers raise many kinds of error
            uids = ("", "")
    study, series = uids
    if not study or not series:
        return Scanned(path, quarantined=_refusal(path, root))
    return Scanned(path, pseudo_uid(key, study), pseudo_uid(key, series))


def _header_json(ds: Dataset) -> str:
    """The de-identified header as DICOM JSON, sorted keys; Pixel Data and large blobs left out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = ds.to_json_dict(bulk_data_threshold=_HEADER_BULK_BYTES,
                                 bulk_data_element_handler=lambda _: "omitted")
    return json.dumps(header, sort_keys=True, separators=(",", ":"))


def _study_date(ds: Dataset) -> date | None:
    text = str(ds.get("StudyDate", "") or "")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) == 8 else None
    except ValueError:
        return None


def _age(ds: Dataset) -> str | None:
    """PatientAge (AS, e.g. 069Y, 006M) as whole years, "90+" above 89; None when absent."""
    text = str(ds.get("PatientAge", "") or "").strip()
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in "DWMY":
        return None
    return age_group(int(text[:3]) if text[3] == "Y" else 0)


def _characteristic(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip()
    return value or None


def process_series(root: Path, series_uid: str, paths: Sequence[str], out: Path, key: bytes,
                   options: DicomOptions) -> SeriesResult:
    """Validate, de-identify, normalise and write one series (see the module docstring).

    ``series_uid`` is the pseudonymous UID from :func:`scan_file`; ``paths`` are the series'
    files relative to ``root``. Never raises for bad input.
    """
    seconds: Counter[str] = Counter()
    clock, cpu = time.perf_counter(), time.process_time()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] += now - clock
        clock = now

    good: list[tuple[str, Dataset]] = []
    bad: list[Quarantined] = []
    patients: set[str] = set()
    for path in paths:
        try:
            ds = read_instance(root / path, max_pixels=options.max_pixels)
            if pseudo_uid(key, str(get_value(ds, "SeriesInstanceUID", ""))) != series_uid:
                raise DicomError("inconsistent_series", "the file's SeriesInstanceUID is not the one "
                                 "it was grouped by (changed since the scan?): re-run")
            lap("parse")
            # Every instance is checked; only the header that is written gets de-identified
            # (below): the others are dropped unwritten, so cleaning them would change nothing.
            patients.add(check_deidentifiable(ds))
            good.append((path, ds))
            lap("deid")
        except DicomError as e:
            bad.append(Quarantined(path, e.reason, e.message))
        except OSError as e:
            bad.append(_unreadable(path, e))
    if bad:
        message = (f"{len(bad)} other instance(s) of this series were quarantined: the series is "
                   "incomplete; fix or re-export them and re-run")
        siblings = [Quarantined(p, "series_incomplete", message) for p, _ in good]
        seconds["cpu"] = time.process_time() - cpu
        return SeriesResult(series_uid, False, len(paths), tuple(bad + siblings), dict(seconds))

    datasets = [ds for _, ds in good]
    try:
        if len(patients) > 1:
            raise DicomError("inconsistent_series", f"the instances name {len(patients)} different "
                             "patients (PatientID): split the series by patient")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            volume = volume_from_datasets(datasets, allow_modalities=options.allow_modalities)
        lap("volume")
        normalised = volume.normalized(options.spec)
        lap("normalise")
        header = deidentify(volume.datasets[0], key, options.deid)  # in place: after decoding
        lap("deid")
    except DicomError as e:
        seconds["cpu"] = time.process_time() - cpu
        return SeriesResult(series_uid, False, len(paths),
                            tuple(Quarantined(p, e.reason, e.message) for p in paths), dict(seconds))
    chars = options.deid.retain_patient_characteristics
    # Identifiers come from the de-identified header only: the Volume holds the originals.
    record = VolumeRecord(
        patient_pseudonym=str(header.PatientID),
        study_uid=str(header.StudyInstanceUID),
        series_uid=str(header.SeriesInstanceUID),
        modality=volume.modality,
        body_part=volume.body_part,
        study_date=_study_date(header) if options.deid.retain_dates else None,
        n_instances=volume.n_instances,
        source_shape=volume.shape,
        source_spacing_mm=volume.spacing_mm,
        spacing_mm=options.spec.spacing_mm,
        window=window_name(options.spec.window),
        volume=normalised,
        patient_sex=_characteristic(header, "PatientSex") if chars else None,
        patient_age=_age(header) if chars else None,
        dicom_header=_header_json(header),
    )
    lap("header")
    write_shard(build_table([record], options.spec), shard_path(out, series_uid))
    lap("write")
    seconds["cpu"] = time.process_time() - cpu
    return SeriesResult(series_uid, True, volume.n_instances, (), dict(seconds))
