"""DICOM instances to one validated CT volume.

:func:`read_instance` parses one untrusted file and rejects what cannot be used, deciding from the
header before any pixel decoding; :func:`volume_from_datasets` checks that the instances form one
regular series and orders them by geometry into a :class:`Volume`, whose pixels are decoded into
Hounsfield units only when asked for (all of them, or only those a model's input needs).

Every rejection is a :class:`~medray.errors.DicomError` whose ``reason`` is one of :data:`REASONS`
(also used in quarantine records) and whose message never quotes a value from the file.
Only single-frame, monochrome instances (CT Image Storage) are supported; multi-frame (Enhanced CT)
instances are rejected as ``unsupported_modality``. Uncompressed little-endian pixel data is viewed
in place; compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE) are decoded by the
decoders :mod:`medray.dicom.codecs` names, and refused as ``unsupported_transfer_syntax`` (with the
package to install) where none is installed.
"""

from __future__ import annotations

import io
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medray.dicom.codecs import decodable, decode_frame, unsupported_message
from medray.dicom.part10 import get_value, parse_part10, pixel_data, pixel_data_length, read_part10
from medray.dicom.quiet import silenced_warnings
from medray.errors import DicomError
from medray.imaging.normalize import InputSpec, normalize_slices, to_hu

__all__ = [
    "REASONS",
    "DEFAULT_MAX_PIXELS",
    "Volume",
    "read_instance",
    "sort_slices",
    "volume_from_datasets",
]

REASONS: tuple[str, ...] = (
    "not_dicom",
    "truncated",
    "no_pixel_data",
    "unsupported_transfer_syntax",
    "unsupported_modality",
    "too_large",
    "inconsistent_series",
    "burned_in_annotation",
)

DEFAULT_MAX_PIXELS = 512 * 512 * 2000

_UNDEFINED_LENGTH = 0xFFFFFFFF
# Orientation cosines and pixel spacings are written with a few decimals; equal within these.
_ORIENTATION_ATOL = 1e-4
_PIXEL_SPACING_ATOL_MM = 1e-3
# A Code String value (PS3.5): safe to quote, it cannot hold free text.
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")


@dataclass
class Volume:
    """A validated CT series, ordered by geometry; its pixels are decoded only when asked for.

    ``shape`` and ``spacing_mm`` are ``(z, y, x)``; ``origin_mm`` is the ImagePositionPatient of
    the first slice, in DICOM patient coordinates ``(x, y, z)``. Slices ascend along the slice
    normal (for axial series: feet to head). :attr:`hu` decodes the whole volume into Hounsfield
    units; :meth:`normalized` computes a model's input from the slices it needs only, without the
    full-resolution array. Either raises DicomError (truncated) for pixel data that cannot be
    decoded. The identifiers are the original ones, i.e. PHI, and are left out of ``repr`` so that
    logging a volume does not leak them.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    study_uid: str = field(repr=False)
    series_uid: str = field(repr=False)
    patient_id: str = field(repr=False)
    modality: str
    body_part: str
    n_instances: int
    datasets: list[Dataset] = field(repr=False)
    rescale: list[tuple[float, float]] = field(repr=False)

    _buffer: bytearray = field(default_factory=bytearray, init=False, repr=False, compare=False)
    _replaced: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def read_slice(self, i: int) -> tuple[np.ndarray, float, float]:
        """Slice ``i``'s stored values (rows, columns) and its (RescaleSlope, RescaleIntercept).

        The values may be a view of a buffer the next call reuses: copy them to keep them.
        """
        stored = self._replaced.get(i)
        if stored is None:
            stored = _decode(self.datasets[i], self.shape[1], self.shape[2], self._buffer)
        return (stored, *self.rescale[i])

    def replace_slice(self, i: int, stored: np.ndarray) -> None:
        """Use ``stored`` (rows, columns) as slice ``i``'s stored values from now on (e.g. with
        burned-in text blanked); call it before :attr:`hu` is first read."""
        if stored.shape != self.shape[1:]:
            raise ValueError(f"slice {i} must be {self.shape[1:]}, got {stored.shape}")
        self._replaced[i] = stored

    def replaced_slices(self) -> dict[int, np.ndarray]:
        """The slices :meth:`replace_slice` replaced, by index."""
        return dict(self._replaced)

    @cached_property
    def hu(self) -> np.ndarray:
        """The whole volume in Hounsfield units, float32 ``(z, y, x)`` (decoded once, then kept)."""
        hu = np.empty(self.shape, dtype=np.float32)
        for i in range(self.shape[0]):
            to_hu(*self.read_slice(i), out=hu[i])
        return hu

    def normalized(self, spec: InputSpec) -> np.ndarray:
        """:func:`medray.imaging.normalize.normalize_volume` of :attr:`hu`, decoding only the slices it needs."""
        return normalize_slices(self.shape, self.read_slice, self.spacing_mm, spec)


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """A positive integer element, ``default`` when absent or empty, ``None`` when malformed."""
    value = get_value(ds, keyword)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray | None:
    """``count`` finite floats from a multi-valued element, ``None`` when absent or malformed."""
    value = get_value(ds, keyword)
    if value is None or value == "":
        return None
    try:
        array = np.asarray([float(v) for v in (value if count > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (count,) and np.isfinite(array).all() else None


def _read_with_pydicom(data: bytes) -> Dataset:
    """pydicom's reading of a file the fast parser left to it; DicomError for what cannot be read."""
    with silenced_warnings(record=True) as caught:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
        except EOFError:
            raise DicomError("truncated", "the file ends inside its header: re-transfer or re-export it") from None
        except Exception:
            # Broad on purpose: malformed input makes pydicom raise many kinds of exception, and the
            # chained exception (which may quote the file) is dropped so that no PHI reaches logs.
            raise DicomError(
                "not_dicom",
                "not a DICOM Part 10 file (no 'DICM' preamble or an unreadable header): "
                "send DICOM files only",
            ) from None
    # pydicom reads a file cut short without raising: it warns at an unterminated encapsulated
    # element, and keeps a value shorter than its declared length.
    cut = any(issubclass(w.category, UserWarning) and "End of file" in str(w.message) for w in caught)
    cut = cut or any(
        isinstance(e, RawDataElement)
        and e.value is not None
        and e.length != _UNDEFINED_LENGTH
        and len(e.value) < e.length
        for e in ds.elements()
    )
    if cut:
        raise DicomError("truncated", "the file is cut short inside a data element: re-transfer or re-export it")
    return ds


def read_instance(source: bytes | str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Parse one DICOM Part 10 file (bytes or a path) and check that its pixel data can be used.

    Nothing is decoded here: size and transfer syntax are decided from the header, so a
    decompression bomb is refused before it is expanded. Raises DicomError with reason
    not_dicom, truncated, no_pixel_data, too_large or unsupported_transfer_syntax; OSError
    when a path cannot be read (its message names the path: do not log it as is).
    """
    # The common encoding (Explicit VR Little Endian) is parsed by medray.dicom.part10, several times
    # faster than pydicom, and from a path without reading the pixel data yet; that parser never
    # returns a value cut short.
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        ds = parse_part10(data)
    else:
        data, ds = None, read_part10(source)
    if ds is None:
        # From memory rather than from the path: keeps the file name out of pydicom's messages.
        ds = _read_with_pydicom(data if data is not None else Path(source).read_bytes())
    if "PixelData" not in ds:
        raise DicomError(
            "no_pixel_data",
            "the instance has no PixelData (e.g. a report or presentation state): send image instances only",
        )

    rows, columns, bits = _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "BitsAllocated")
    frames, samples = _int(ds, "NumberOfFrames", 1), _int(ds, "SamplesPerPixel", 1)
    if None in (rows, columns, bits, frames, samples):
        raise DicomError(
            "no_pixel_data",
            "the pixel data cannot be interpreted: Rows, Columns, BitsAllocated, SamplesPerPixel and "
            "NumberOfFrames must be positive integers; re-export the image",
        )
    n_pixels = rows * columns * frames
    if n_pixels > max_pixels:
        raise DicomError(
            "too_large",
            f"the header declares {rows} x {columns} x {frames} frames = {n_pixels} pixels, above the "
            f"limit of {max_pixels}: refused without decoding (raise max_pixels if the image is genuine)",
        )

    syntax = UID(str(get_value(ds.file_meta, "TransferSyntaxUID", "")))
    if not decodable(syntax):
        raise DicomError("unsupported_transfer_syntax", unsupported_message(syntax))
    if not syntax.is_encapsulated:
        expected = (rows * columns * frames * samples * bits + 7) // 8
        held = pixel_data_length(ds)
        if held < expected:
            raise DicomError(
                "truncated",
                f"the pixel data holds {held} bytes where the header requires {expected}: "
                "the file was cut short; re-transfer or re-export it",
            )
    return ds


def _sorted_geometry(datasets: Sequence[Dataset]) -> tuple[list[Dataset], np.ndarray, np.ndarray]:
    """Datasets sorted along the slice normal, their positions (n, 3) and the unit normal."""
    orientations = [_floats(ds, "ImageOrientationPatient", 6) for ds in datasets]
    positions = [_floats(ds, "ImagePositionPatient", 3) for ds in datasets]
    if any(o is None for o in orientations) or any(p is None for p in positions):
        raise DicomError(
            "inconsistent_series",
            "an instance lacks a valid ImagePositionPatient or ImageOrientationPatient, so slices "
            "cannot be ordered by geometry: re-export the series",
        )
    if not np.allclose(np.stack(orientations), orientations[0], atol=_ORIENTATION_ATOL):
        raise DicomError(
            "inconsistent_series",
            "instances have different ImageOrientationPatient: split the series by orientation",
        )
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    norm = float(np.linalg.norm(normal))
    if norm < 0.5:  # rows and columns must be (near) orthogonal unit vectors
        raise DicomError("inconsistent_series", "ImageOrientationPatient is degenerate: re-export the series")
    normal /= norm
    ipp = np.stack(positions)
    order = np.argsort(ipp @ normal, kind="stable")
    return [datasets[i] for i in order], ipp[order], normal


def sort_slices(datasets: list[Dataset]) -> list[Dataset]:
    """Order slices by ImagePositionPatient projected on the slice normal (not InstanceNumber).

    Ascending along the normal (row x column direction cosines); for axial series, feet to head.
    """
    if len(datasets) < 2:
        return list(datasets)
    return _sorted_geometry(datasets)[0]


def _same(datasets: Sequence[Dataset], keyword: str, what: str, fix: str) -> str:
    values = {str(get_value(ds, keyword, "")) for ds in datasets}
    if len(values) > 1:
        raise DicomError("inconsistent_series", f"instances come from {len(values)} different {what}: {fix}")
    return values.pop()


def _slice_spacing(ipp: np.ndarray, normal: np.ndarray, tolerance_mm: float) -> float:
    """Uniform distance between consecutive sorted slices; DicomError on gaps, duplicates or tilt."""
    along = ipp @ normal
    steps = np.diff(along)
    typical = float(np.median(steps))
    if steps.min() <= tolerance_mm:
        raise DicomError(
            "inconsistent_series",
            "two or more instances share a slice position: remove duplicate instances or split the series",
        )
    irregular = int(np.count_nonzero(np.abs(steps - typical) > tolerance_mm))
    if irregular:
        raise DicomError(
            "inconsistent_series",
            f"slice spacing is not uniform ({irregular} of {len(steps)} gaps differ from {typical:.3f} mm "
            f"by more than {tolerance_mm} mm): a slice is missing; re-export the complete series",
        )
    offsets = ipp - ipp[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if float(np.linalg.norm(in_plane, axis=1).max()) > tolerance_mm:
        # A sheared stack (gantry tilt, or several stacks in one series) cannot be stacked as is.
        raise DicomError(
            "inconsistent_series",
            "slices are not stacked along the slice normal (gantry tilt or several stacks): "
            "resample or split the series",
        )
    return float((along[-1] - along[0]) / (len(along) - 1))


def _rescale(ds: Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), 1 and 0 when absent; DicomError when present but malformed."""
    values = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        if get_value(ds, keyword) in (None, ""):
            values.append(default)
            continue
        value = _floats(ds, keyword, 1)
        if value is None:
            # Never defaulted: a wrong slope or intercept would silently give wrong HU.
            raise DicomError(
                "no_pixel_data",
                "RescaleSlope or RescaleIntercept is malformed, so pixel values cannot be converted "
                "to HU: re-export the image",
            )
        values.append(float(value[0]))
    return values[0], values[1]


def _native_dtype(ds: Dataset, rows: int, columns: int) -> np.dtype | None:
    """The dtype to view uncompressed little-endian pixel data as directly, or None.

    None sends the instance through pydicom's decoder: compressed or big-endian data, and signed
    values narrower than their allocation (which need sign extension).
    """
    if get_value(ds.file_meta, "TransferSyntaxUID") not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    bits, stored, signed = (get_value(ds, k) for k in ("BitsAllocated", "BitsStored", "PixelRepresentation"))
    if bits not in (8, 16) or signed not in (0, 1) or (signed and stored != bits):
        return None
    if get_value(ds, "SamplesPerPixel", 1) != 1:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    return dtype if pixel_data_length(ds) >= rows * columns * dtype.itemsize else None


def _decode(ds: Dataset, rows: int, columns: int, buffer: bytearray | None = None) -> np.ndarray:
    """Stored values (rows, columns) of a single-frame instance.

    Uncompressed pixel data not read yet (:func:`medray.dicom.part10.read_part10`) is read into
    ``buffer`` when given: the array returned is then a view of it, valid until its next use.
    """
    dtype = _native_dtype(ds, rows, columns)
    if dtype is not None:
        # Uncompressed: a view of the bytes, the same values pydicom's decoder gives, 30x faster.
        try:
            pixels = pixel_data(ds, buffer)
        except OSError:
            raise DicomError(
                "truncated", "the pixel data could not be read from the file again (was it changed "
                "or removed during the run?): re-run"
            ) from None
        return np.frombuffer(pixels, dtype=dtype, count=rows * columns).reshape(rows, columns)
    try:
        stored = decode_frame(ds)
    except Exception:
        # Broad on purpose: a damaged codestream makes codecs raise arbitrary errors.
        raise DicomError(
            "truncated", "the pixel data could not be decoded (damaged or cut short): re-export the image"
        ) from None
    if stored.shape != (rows, columns):
        raise DicomError(
            "truncated", "the decoded pixel data does not match Rows and Columns: re-export the image"
        )
    return stored


def volume_from_datasets(
    datasets: list[Dataset],
    *,
    spacing_tolerance_mm: float = 0.1,
    allow_modalities: Collection[str] = ("CT",),
) -> Volume:
    """Validate that ``datasets`` (from :func:`read_instance`) form one regular series; order them.

    All instances must share study, series, orientation, Rows/Columns and PixelSpacing, and their
    slice positions must be evenly spaced within ``spacing_tolerance_mm``; HU use each slice's
    RescaleSlope/Intercept (1/0 when absent). One instance gives a 1-slice volume whose z spacing is
    its SliceThickness (1.0 when absent). Raises DicomError: unsupported_modality (also for
    multi-frame or colour images), burned_in_annotation, inconsistent_series, no_pixel_data when
    Rows/Columns or the rescale values are malformed. No pixel data is decoded here: the
    Volume's ``hu`` and ``normalized`` do that, and raise DicomError (truncated) when it cannot be.
    """
    if not datasets:
        raise ValueError("volume_from_datasets needs at least one instance")
    allowed = {m.upper() for m in allow_modalities}
    with silenced_warnings():
        for ds in datasets:
            modality = str(get_value(ds, "Modality", "")).strip().upper()
            if modality not in allowed:
                shown = modality if _CODE_STRING.match(modality) else "a missing or invalid modality"
                raise DicomError(
                    "unsupported_modality",
                    f"modality {shown} is not accepted here (allowed: {', '.join(sorted(allowed))})",
                )
            if str(get_value(ds, "BurnedInAnnotation", "")).strip().upper() == "YES":
                raise DicomError(
                    "burned_in_annotation",
                    "an instance declares burned-in annotation (text in the pixels may identify the "
                    "patient): it cannot be de-identified automatically; review it manually",
                )
            if _int(ds, "NumberOfFrames", 1) != 1 or _int(ds, "SamplesPerPixel", 1) != 1:
                raise DicomError(
                    "unsupported_modality",
                    "only single-frame monochrome images are supported: export multi-frame "
                    "(Enhanced CT) or colour images as single-frame CT Image Storage",
                )

        study_uid = _same(datasets, "StudyInstanceUID", "studies", "group instances by study and series first")
        series_uid = _same(datasets, "SeriesInstanceUID", "series", "group instances by series first")
        if len({(_int(ds, "Rows"), _int(ds, "Columns")) for ds in datasets}) > 1:
            raise DicomError("inconsistent_series", "instances have different Rows/Columns: split the series")
        rows, columns = _int(datasets[0], "Rows"), _int(datasets[0], "Columns")
        if rows is None or columns is None:
            raise DicomError("no_pixel_data", "Rows and Columns must be positive integers: re-export the image")
        pixel_spacings = [_floats(ds, "PixelSpacing", 2) for ds in datasets]
        if any(p is None for p in pixel_spacings) or (np.stack(pixel_spacings) <= 0).any():
            raise DicomError(
                "inconsistent_series", "an instance lacks a valid PixelSpacing: re-export the series"
            )
        if not np.allclose(np.stack(pixel_spacings), pixel_spacings[0], atol=_PIXEL_SPACING_ATOL_MM):
            raise DicomError("inconsistent_series", "instances have different PixelSpacing: split the series")

        if len(datasets) == 1:
            ordered = list(datasets)
            thickness = _floats(datasets[0], "SliceThickness", 1)
            spacing_z = float(thickness[0]) if thickness is not None and thickness[0] > 0 else 1.0
            position = _floats(datasets[0], "ImagePositionPatient", 3)
            origin = position if position is not None else np.zeros(3)
        else:
            ordered, ipp, normal = _sorted_geometry(datasets)
            spacing_z = _slice_spacing(ipp, normal, spacing_tolerance_mm)
            origin = ipp[0]

        rescale = [_rescale(ds) for ds in ordered]  # all checked now: decoding comes later
        first = ordered[0]
        return Volume(
            shape=(len(ordered), rows, columns),
            spacing_mm=(spacing_z, float(pixel_spacings[0][0]), float(pixel_spacings[0][1])),
            origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
            study_uid=study_uid,
            series_uid=series_uid,
            patient_id=str(first.get("PatientID", "")),
            modality=str(first.get("Modality", "")).strip().upper(),
            body_part=str(first.get("BodyPartExamined", "") or "").strip().upper(),
            n_instances=len(ordered),
            datasets=ordered,
            rescale=rescale,
        )
