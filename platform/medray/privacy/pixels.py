"""Clean Pixel Data (PS3.15 E.3.1, CID 7050 113101): burned-in text found by OCR, known regions blanked.

Burned-in annotation (names, dates, IDs written into the pixels by the modality or a workstation)
is not declared reliably by BurnedInAnnotation. :func:`find_text` renders a slice's stored values
to 8 bits and runs Tesseract (Debian's ``tesseract-ocr``, through ``pytesseract``) in sparse-text
mode; :func:`clean_pixels` first blanks the regions where a known device writes its annotation
(:class:`DeviceRegions`, matched on Manufacturer, ManufacturerModelName, Rows and Columns, as
de-identification tools such as RSNA CTP's pixel anonymizer scripts do), then refuses, with a
:class:`~medray.errors.DicomError` of reason ``burned_in_text``, an image in which OCR still finds
text. Found text is never returned, logged or quoted: only its boxes and confidence.

Tesseract is started once per image (a process, ~0.2-2 s for 512 x 512 on one core): this is a
gate for exports, not for every training read. :func:`require_tesseract` fails fast, with the
install line, where it is missing.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medray.errors import ConfigError, DicomError

__all__ = ["PIXEL_REASONS", "DeviceRegions", "TextBox", "clean_pixels", "find_text", "load_regions",
           "require_tesseract"]

# Reason codes of this module (quarantine records).
PIXEL_REASONS: tuple[str, ...] = ("burned_in_text",)

_MIN_CONFIDENCE = 60.0  # Tesseract's word confidence (0-100) from which a word counts as text
_MIN_CHARACTERS = 2  # alphanumeric characters a word needs: lone marks and speckles are not text
_OCR_CONFIG = "--psm 11"  # sparse text: annotation sits in corners, not in paragraphs


@dataclass(frozen=True)
class TextBox:
    """Where OCR found a word: pixel box (left, top, width, height) and confidence; never the text."""

    left: int
    top: int
    width: int
    height: int
    confidence: float


@dataclass(frozen=True)
class DeviceRegions:
    """The boxes (left, top, width, height) in which one device burns in its annotation, for
    images of ``rows`` x ``columns``; ``manufacturer`` and ``model`` match the start of the
    instance's Manufacturer and ManufacturerModelName (case-insensitive; "" matches any)."""

    manufacturer: str
    model: str
    rows: int
    columns: int
    boxes: tuple[tuple[int, int, int, int], ...]

    def __post_init__(self) -> None:
        if self.rows <= 0 or self.columns <= 0 or not self.boxes:
            raise ConfigError("DeviceRegions needs positive rows and columns and at least one box")
        for left, top, width, height in self.boxes:
            if min(left, top) < 0 or width <= 0 or height <= 0 or left + width > self.columns \
                    or top + height > self.rows:
                raise ConfigError("a DeviceRegions box (left, top, width, height) must lie inside "
                                  "the image of rows x columns")

    def matches(self, ds: Dataset) -> bool:
        """Whether ``ds`` comes from this device, at this image size."""
        manufacturer = str(ds.get("Manufacturer", "") or "").strip().upper()
        model = str(ds.get("ManufacturerModelName", "") or "").strip().upper()
        return (manufacturer.startswith(self.manufacturer.upper()) and model.startswith(self.model.upper())
                and (ds.get("Rows"), ds.get("Columns")) == (self.rows, self.columns))


def load_regions(path: str | Path) -> tuple[DeviceRegions, ...]:
    """Devices' annotation regions from a JSON file: a list of {manufacturer, model, rows, columns,
    boxes: [[left, top, width, height], ...]}; ConfigError for a file that is not that."""
    try:
        entries = json.loads(Path(path).read_text())
        return tuple(DeviceRegions(str(e.get("manufacturer", "")), str(e.get("model", "")), int(e["rows"]),
                                   int(e["columns"]), tuple(tuple(int(v) for v in b) for b in e["boxes"]))
                     for e in entries)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"{path}: not a JSON list of {{manufacturer, model, rows, columns, boxes}} "
                          f"({type(e).__name__})") from None


@functools.cache
def _pytesseract():
    """pytesseract, once Tesseract itself is found; ConfigError naming the install otherwise."""
    if shutil.which("tesseract") is None:
        raise ConfigError("Clean Pixel Data needs Tesseract OCR: apt-get install tesseract-ocr "
                          "(Debian) and pip install pytesseract")
    try:
        import pytesseract
    except ImportError:
        raise ConfigError("Clean Pixel Data needs pytesseract: pip install pytesseract") from None
    # One OpenMP thread per Tesseract process (its manual's advice when several run at once, as
    # the pipeline's tasks do): its threads only contend for the same cores.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    return pytesseract


def require_tesseract() -> None:
    """Fail fast (ConfigError with the install line) where Tesseract or pytesseract is missing."""
    _pytesseract()


def _render(pixels: np.ndarray) -> np.ndarray:
    """Stored values as 8 bits over their own range: burned-in text is drawn at a bright value."""
    values = pixels.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return ((values - low) * (255.0 / (high - low))).astype(np.uint8)


def find_text(pixels: np.ndarray, *, min_confidence: float = _MIN_CONFIDENCE) -> list[TextBox]:
    """The words OCR reads in a 2-D image (stored values, any integer or float type).

    ConfigError where Tesseract is missing; ValueError for an image that is not 2-D.
    """
    if pixels.ndim != 2:
        raise ValueError(f"find_text takes one 2-D image, got an array of shape {pixels.shape}")
    ocr = _pytesseract()
    data = ocr.image_to_data(_render(pixels), config=_OCR_CONFIG, output_type=ocr.Output.DICT)
    boxes = []
    for i, word in enumerate(data["text"]):
        confidence = float(data["conf"][i])
        if confidence >= min_confidence and sum(c.isalnum() for c in word) >= _MIN_CHARACTERS:
            boxes.append(TextBox(int(data["left"][i]), int(data["top"][i]), int(data["width"][i]),
                                 int(data["height"][i]), confidence))
    return boxes


def clean_pixels(ds: Dataset, pixels: np.ndarray, regions: Sequence[DeviceRegions] = ()) -> np.ndarray:
    """The Clean Pixel Data option on one image: ``pixels`` (its stored values) with the regions
    of its device blanked (set to the image's minimum), checked by OCR.

    Returns the image itself when nothing was blanked, a blanked copy otherwise. Raises
    DicomError (``burned_in_text``) when text remains, ConfigError where Tesseract is missing.
    """
    matched = [device for device in regions if device.matches(ds)]
    cleaned = pixels.copy() if matched else pixels
    for device in matched:
        for left, top, width, height in device.boxes:
            cleaned[top:top + height, left:left + width] = pixels.min()
    found = find_text(cleaned)
    if found:
        where = ("outside the regions known for its device" if matched
                 else "and no annotation regions are known for its device")
        raise DicomError(
            "burned_in_text",
            f"OCR finds {len(found)} word(s) of text in the pixels {where}: the image may identify "
            "the patient; review it, or add its device's annotation regions",
        )
    return cleaned
