"""The DICOM pipeline's work on files and series: plain functions that Ray Data tasks call.

Pixel data never travels through the object store and no global shuffle runs. Files are grouped
either by a scan (1 and 2) or by folder in one pass (3):

1. :func:`scan_file` reads the start of a file (:mod:`medray.dicom.sniff`, or pydicom
   up to Pixel Data) and returns the pseudonymous study and series UIDs that group it, or a
   quarantine record.
2. :func:`process_series` reads one series' headers, validates every instance and checks that
   the profile can clean it, orders them by geometry, normalises the volume
   (:meth:`medray.dicom.volume.Volume.normalized`: Hounsfield units, resampling and window,
   decoding only the slices the output needs), de-identifies the header it keeps (the first
   slice's) and writes ``volumes/<pseudonymous series UID>.parquet``. The other instances'
   headers are dropped unwritten, so they are checked but not cleaned.
3. :func:`process_folder` reads every header of one folder once, groups the instances into
   series and processes each as 2 does, into a pending shard (:func:`pending_path`) that the
   driver renames into place, or discards when other folders hold more of the series.

With ``export_dicom``, every instance of a series written is also de-identified in full and
written as a DICOM Part 10 file, pixel data as it came, to ``dicom/<pseudonymous series UID>/
<pseudonymous SOP Instance UID>.dcm`` (:func:`export_path`): into a pending folder first, moved
into place once the series' shard is written (:func:`commit_export`).

Policy for damaged series: when any instance of a series is refused, the whole series is
quarantined (a partial volume would be silently wrong): the bad files with their own reason, the
others with ``series_incomplete``. No message carries a value from a file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from medray.data.shards import VOLUMES_DIR, VolumeRecord, build_table, window_name, write_shard
from medray.dicom.part10 import get_value
from medray.dicom.quiet import silenced_warnings
from medray.dicom.sniff import sniff_series
from medray.dicom.values import parse_age, parse_date
from medray.dicom.volume import DEFAULT_MAX_PIXELS, REASONS, Volume, read_instance, volume_from_datasets
from medray.errors import ConfigError, DicomError
from medray.imaging.normalize import InputSpec
from medray.privacy.emr import age_group
from medray.privacy.pixels import PIXEL_REASONS, DeviceRegions, clean_pixels
from medray.privacy.ps315 import DEID_REASONS, DeidOptions, check_deidentifiable, deidentify
from medray.privacy.pseudonym import pseudo_uid
from workloads.preprocess.runs import Quarantined

__all__ = [
    "GROUPINGS",
    "PIPELINE_REASONS",
    "QUARANTINE_REASONS",
    "DicomOptions",
    "Scanned",
    "SeriesResult",
    "scan_file",
    "process_series",
    "FolderSeries",
    "process_folder",
    "pending_path",
    "shard_path",
    "EXPORT_DIR",
    "export_path",
    "pending_export_path",
    "commit_export",
    "is_done",
]

# How files are grouped into series. "scan": a header scan of every file, then one task per group
# of series. "folder": one pass, each task taking whole folders (each header read once), series
# found in more than one folder processed again whole. "auto": "folder" when no folder holds more
# than a task slot's share of the files (exports with a folder per series), else "scan".
GROUPINGS: tuple[str, ...] = ("auto", "folder", "scan")

# Reasons of this pipeline, beyond those of medray.dicom.volume and medray.privacy.ps315.
PIPELINE_REASONS: tuple[str, ...] = ("unreadable", "missing_uid", "series_incomplete", "internal_error")
QUARANTINE_REASONS: tuple[str, ...] = REASONS + DEID_REASONS + PIXEL_REASONS + PIPELINE_REASONS

_STUDY_UID = 0x0020000D
_SERIES_UID = 0x0020000E
_HEADER_BULK_BYTES = 1024  # binary values larger than this are left out of the header JSON
_MISSING_UID = ("the instance has no StudyInstanceUID or SeriesInstanceUID, so it cannot be grouped "
                "into a series: re-export it")


@dataclass(frozen=True)
class DicomOptions:
    """How the DICOM pipeline normalises and de-identifies.

    ``spec`` sets window, spacing and shape (``window=None`` keeps raw HU); ``concurrency`` caps
    the parallel tasks (default: the CPUs of the running prep nodes); ``resume`` skips series
    whose shard already exists; ``grouping`` chooses how files are grouped into series (see
    :data:`GROUPINGS`; the output is the same either way); ``export_dicom`` also writes every
    de-identified instance as a Part 10 file (:func:`export_path`); ``clean_pixel_data`` runs
    PS3.15's Clean Pixel Data on every slice (:mod:`medray.privacy.pixels`: ``pixel_regions``
    blanked, series with text left quarantined as ``burned_in_text``).
    """

    spec: InputSpec = field(default_factory=InputSpec)
    deid: DeidOptions = field(default_factory=DeidOptions)
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_modalities: tuple[str, ...] = ("CT",)
    concurrency: int | None = None
    resume: bool = False
    grouping: str = "auto"
    export_dicom: bool = False
    clean_pixel_data: bool = False
    pixel_regions: tuple[DeviceRegions, ...] = ()

    def __post_init__(self) -> None:
        if self.grouping not in GROUPINGS:
            raise ConfigError(f"grouping must be one of {', '.join(GROUPINGS)}, got {self.grouping!r}")
        if self.pixel_regions and not self.clean_pixel_data:
            raise ConfigError("pixel_regions are blanked only with clean_pixel_data=True: set it")

    def to_dict(self) -> dict:
        """The options that shape the output (recorded in the manifest, compared on resume)."""
        return {
            "spec": self.spec.to_dict(),
            "retain_dates": self.deid.retain_dates,
            "retain_patient_characteristics": self.deid.retain_patient_characteristics,
            # The other PS3.15 options only when chosen, so that earlier manifests still resume.
            **{k: v for k, v in self.deid.to_dict().items()
               if v and k not in ("retain_dates", "retain_patient_characteristics")},
            "max_pixels": self.max_pixels,
            "allow_modalities": list(self.allow_modalities),
            **({"export_dicom": True} if self.export_dicom else {}),  # earlier manifests still resume
            **({"clean_pixel_data": True, "pixel_regions": [
                {"manufacturer": r.manufacturer, "model": r.model, "rows": r.rows, "columns": r.columns,
                 "boxes": [list(b) for b in r.boxes]} for r in self.pixel_regions]}
               if self.clean_pixel_data else {}),
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


def shard_path(out: Path, series_uid: str) -> Path:
    """Where a series' shard goes: named by its pseudonymous UID only."""
    return out / VOLUMES_DIR / f"{series_uid}.parquet"


EXPORT_DIR = "dicom"


def export_path(out: Path, series_uid: str) -> Path:
    """The folder of a series' de-identified Part 10 files (``export_dicom``), one per instance,
    each named by its pseudonymous SOP Instance UID."""
    return out / EXPORT_DIR / series_uid


def pending_export_path(out: Path, series_uid: str) -> Path:
    """Where a series' export is written until its shard is (a hidden ``.tmp`` folder: a new
    run removes what an interrupted one left)."""
    return out / EXPORT_DIR / f".{series_uid}.pending.tmp"


def commit_export(out: Path, series_uid: str) -> None:
    """Move a series' pending export into place, replacing an earlier one."""
    final = export_path(out, series_uid)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(pending_export_path(out, series_uid), final)


def is_done(out: Path, series_uid: str, options: DicomOptions) -> bool:
    """Whether a series is written already (``resume`` skips it): its shard, and its export
    when ``export_dicom``."""
    return shard_path(out, series_uid).exists() and (
        not options.export_dicom or export_path(out, series_uid).is_dir())


def _write_instances(datasets: Sequence[Dataset], folder: Path, replaced: dict[int, np.ndarray]) -> None:
    """De-identified instances as Part 10 files in ``folder`` (made anew), pixel data as read but
    for the slices ``replaced`` (blanked), written uncompressed (Explicit VR Little Endian)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with silenced_warnings():
        for i, ds in enumerate(datasets):
            if i in replaced:
                ds.PixelData = replaced[i].astype(replaced[i].dtype.newbyteorder("<"), copy=False).tobytes()
                ds["PixelData"].VR = "OB" if replaced[i].dtype.itemsize == 1 else "OW"
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.preamble = bytes(128)  # the original's may hold anything (PS3.10 7.1)
            pydicom.dcmwrite(folder / f"{ds.SOPInstanceUID}.dcm", ds, enforce_file_format=True)


def _clean_pixel_data(volume: Volume, regions: Sequence[DeviceRegions]) -> None:
    """Clean Pixel Data on every slice: known regions blanked (kept in ``volume``), DicomError
    (``burned_in_text``) when OCR finds text left in any."""
    for i, ds in enumerate(volume.datasets):
        stored, _, _ = volume.read_slice(i)
        cleaned = clean_pixels(ds, stored, regions)
        if cleaned is not stored:
            volume.replace_slice(i, cleaned)


def _refusal(path: str, root: Path) -> Quarantined:
    """The precise reason a file cannot be grouped, from the full validation (slow path)."""
    try:
        read_instance(root / path)
    except DicomError as e:
        return Quarantined(path, e.reason, e.message)
    except OSError as e:
        return _unreadable(path, e)
    return Quarantined(path, "missing_uid", _MISSING_UID)


def _unreadable(path: str, e: OSError) -> Quarantined:
    # The OSError's own text names the path: only its error code is kept.
    code = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
    return Quarantined(path, "unreadable", f"the file cannot be read ({code}): check its permissions")


def _raw_uids(root: Path, path: str) -> tuple[str, str] | Quarantined:
    """A file's original (StudyInstanceUID, SeriesInstanceUID), either "" when missing, reading
    its header only; a quarantine record when the file cannot be read at all."""
    uids = sniff_series(root / path)
    if uids is None:  # not the common encoding, or not sure: let pydicom read the header
        try:
            with silenced_warnings():
                ds = pydicom.dcmread(root / path, stop_before_pixels=True,
                                     specific_tags=[_STUDY_UID, _SERIES_UID])
                uids = tuple(str(ds[t].value or "").strip() if t in ds else ""
                             for t in (_STUDY_UID, _SERIES_UID))
        except OSError as e:
            return _unreadable(path, e)
        except Exception:  # broad on purpose: malformed headers raise many kinds of error
            uids = ("", "")
    return uids


def scan_file(root: Path, path: str, key: bytes) -> Scanned:
    """Group one file by its pseudonymous study/series UIDs, reading its header only."""
    uids = _raw_uids(root, path)
    if isinstance(uids, Quarantined):
        return Scanned(path, quarantined=uids)
    study, series = uids
    if not study or not series:
        return Scanned(path, quarantined=_refusal(path, root))
    return Scanned(path, pseudo_uid(key, study), pseudo_uid(key, series))


def _header_json(ds: Dataset) -> str:
    """The de-identified header as DICOM JSON, sorted keys; Pixel Data and large blobs left out."""
    with silenced_warnings():
        header = ds.to_json_dict(bulk_data_threshold=_HEADER_BULK_BYTES,
                                 bulk_data_element_handler=lambda _: "omitted")
    return json.dumps(header, sort_keys=True, separators=(",", ":"))


def _study_date(ds: Dataset) -> date | None:
    return parse_date(str(ds.get("StudyDate", "") or ""))


def _age(ds: Dataset) -> str | None:
    """PatientAge (AS, e.g. 069Y, 006M) as whole years, "90+" above 89; None when absent."""
    age = parse_age(str(ds.get("PatientAge", "") or ""))
    if age is None:
        return None
    return age_group(age[0] if age[1] == "Y" else 0)


def _characteristic(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip()
    return value or None


def process_series(root: Path, series_uid: str, paths: Sequence[str], out: Path, key: bytes,
                   options: DicomOptions) -> SeriesResult:
    """Validate, de-identify, normalise and write one series (see the module docstring).

    ``series_uid`` is the pseudonymous UID from :func:`scan_file`; ``paths`` are the series'
    files relative to ``root``. Never raises for bad input.
    """
    series = _Series([])
    for path in paths:
        clock, cpu = time.perf_counter(), time.process_time()
        try:
            ds = read_instance(root / path, max_pixels=options.max_pixels)
            if pseudo_uid(key, str(get_value(ds, "SeriesInstanceUID", ""))) != series_uid:
                raise DicomError("inconsistent_series", "the file's SeriesInstanceUID is not the one "
                                 "it was grouped by (changed since the scan?): re-run")
        except DicomError as e:
            series.add(path, None, Quarantined(path, e.reason, e.message), clock, cpu)
        except OSError as e:
            series.add(path, None, _unreadable(path, e), clock, cpu)
        else:
            series.add(path, ds, None, clock, cpu)
    export = pending_export_path(out, series_uid) if options.export_dicom else None
    result = _finish(series, series_uid, shard_path(out, series_uid), key, options, export)
    if export is not None and result.written:
        commit_export(out, series_uid)
    return result


@dataclass(frozen=True)
class FolderSeries:
    """A series found by :func:`process_folder`: its pseudonymous UIDs, files, and what was done.

    ``skipped``: resumed, its shard already exists (``result`` is then None).
    """

    study_uid: str
    series_uid: str
    paths: tuple[str, ...]
    result: SeriesResult | None
    skipped: bool = False


def pending_path(out: Path, series_uid: str) -> Path:
    """Where :func:`process_folder` writes a series' shard until the driver knows it is whole.

    A hidden name ending in ``.tmp``: readers never list it, and a new run removes what an
    interrupted one left.
    """
    return out / VOLUMES_DIR / f".{series_uid}.pending.tmp"


def process_folder(root: Path, paths: Sequence[str], out: Path, key: bytes,
                   options: DicomOptions) -> tuple[list[FolderSeries], list[Quarantined]]:
    """One pass over the files of one folder (sorted): each header is read once, the files are
    grouped into series, and each series is processed as :func:`process_series` does.

    Shards go to :func:`pending_path`: only the driver knows whether another folder holds more of a
    series (it then discards these and processes the series whole). Returns the series found and
    the files that name no series. Never raises for bad input.
    """
    groups: dict[tuple[str, str], _Series] = {}
    refused: list[Quarantined] = []
    for path in paths:
        clock, cpu = time.perf_counter(), time.process_time()
        ds: Dataset | None = None
        error: Quarantined | None = None
        try:
            ds = read_instance(root / path, max_pixels=options.max_pixels)
            uids = (str(get_value(ds, "StudyInstanceUID", "")).strip(),
                    str(get_value(ds, "SeriesInstanceUID", "")).strip())
        except DicomError as e:
            error = Quarantined(path, e.reason, e.message)
        except OSError as e:
            error = _unreadable(path, e)
        if ds is None:  # a file that cannot be used still belongs to its series, if it names one
            found = _raw_uids(root, path)
            uids = found if not isinstance(found, Quarantined) else ("", "")
        if not uids[0] or not uids[1]:
            refused.append(error or Quarantined(path, "missing_uid", _MISSING_UID))
            continue
        groups.setdefault(uids, _Series([])).add(path, ds, error, clock, cpu)
    found_series = []
    for (study, series_raw), series in groups.items():
        uid = pseudo_uid(key, series_raw)
        if options.resume and is_done(out, uid, options):
            found_series.append(FolderSeries(pseudo_uid(key, study), uid, tuple(series.paths), None, True))
            continue
        export = pending_export_path(out, uid) if options.export_dicom else None
        result = _finish(series, uid, pending_path(out, uid), key, options, export)
        found_series.append(FolderSeries(pseudo_uid(key, study), uid, tuple(series.paths), result))
    return found_series, refused


@dataclass
class _Series:
    """The instances of one series as they are read: all, usable ones, refused ones, their patients."""

    paths: list[str]
    good: list[tuple[str, Dataset]] = field(default_factory=list)
    bad: list[Quarantined] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)
    seconds: Counter[str] = field(default_factory=Counter)
    cpu: float = 0.0

    def add(self, path: str, ds: Dataset | None, error: Quarantined | None, clock: float, cpu: float) -> None:
        """One instance, parsed from ``clock``/``cpu`` on: checked now if it could be read."""
        self.paths.append(path)
        parsed = time.perf_counter()
        self.seconds["parse"] += parsed - clock
        if ds is None:
            self.bad.append(error)  # type: ignore[arg-type]
        else:
            try:
                # Every instance is checked; only the header that is written gets de-identified
                # (below): the others are dropped unwritten, so cleaning them would change nothing.
                self.patients.add(check_deidentifiable(ds))
                self.good.append((path, ds))
            except DicomError as e:
                self.bad.append(Quarantined(path, e.reason, e.message))
        self.seconds["deid"] += time.perf_counter() - parsed
        self.cpu += time.process_time() - cpu


def _finish(series: _Series, series_uid: str, target: Path, key: bytes, options: DicomOptions,
            export: Path | None = None) -> SeriesResult:
    """Quarantine or normalise, de-identify and write (to ``target``) a series read in full; with
    ``export``, every instance de-identified and written there as a Part 10 file too."""
    seconds, paths = series.seconds, series.paths
    clock, cpu = time.perf_counter(), time.process_time() - series.cpu

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[step] += now - clock
        clock = now

    if series.bad:
        message = (f"{len(series.bad)} other instance(s) of this series were quarantined: the series is "
                   "incomplete; fix or re-export them and re-run")
        siblings = [Quarantined(p, "series_incomplete", message) for p, _ in series.good]
        seconds["cpu"] = time.process_time() - cpu
        return SeriesResult(series_uid, False, len(paths), tuple(series.bad + siblings), dict(seconds))

    datasets = [ds for _, ds in series.good]
    try:
        if len(series.patients) > 1:
            raise DicomError("inconsistent_series", f"the instances name {len(series.patients)} different "
                             "patients (PatientID): split the series by patient")
        with silenced_warnings():
            volume = volume_from_datasets(datasets, allow_modalities=options.allow_modalities)
        lap("volume")
        if options.clean_pixel_data:
            _clean_pixel_data(volume, options.pixel_regions)
            lap("pixels")
        normalised = volume.normalized(options.spec)
        lap("normalise")
        cleaned = options.clean_pixel_data
        header = deidentify(volume.datasets[0], key, options.deid, pixels_cleaned=cleaned)  # after decoding
        if export is not None:  # every instance is written: every one is cleaned
            for ds in volume.datasets[1:]:
                deidentify(ds, key, options.deid, pixels_cleaned=cleaned)
        lap("deid")
    except DicomError as e:
        seconds["cpu"] = time.process_time() - cpu
        return SeriesResult(series_uid, False, len(paths),
                            tuple(Quarantined(p, e.reason, e.message) for p in paths), dict(seconds))
    chars = options.deid.retain_patient_characteristics
    dates = options.deid.retain_dates or options.deid.retain_full_dates
    # Identifiers come from the de-identified header only: the Volume holds the originals.
    record = VolumeRecord(
        patient_pseudonym=str(header.PatientID),
        study_uid=str(header.StudyInstanceUID),
        series_uid=str(header.SeriesInstanceUID),
        modality=volume.modality,
        body_part=volume.body_part,
        study_date=_study_date(header) if dates else None,
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
    if export is not None:
        _write_instances(volume.datasets, export, volume.replaced_slices())
        lap("export")
    write_shard(build_table([record], options.spec), target)
    lap("write")
    seconds["cpu"] = time.process_time() - cpu
    return SeriesResult(series_uid, True, volume.n_instances, (), dict(seconds))
