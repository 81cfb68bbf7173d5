"""Clean Pixel Data in the DICOM pipeline: text burned into slices is blanked where its device is
known, and the series is quarantined where it is not."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont

from medray.data.cohort import generate_cohort
from medray.privacy.pixels import DeviceRegions, find_text
from workloads.preprocess.dicom import DicomOptions, preprocess_dicom
from workloads.preprocess.tasks import EXPORT_DIR

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="Tesseract OCR not installed: apt-get install tesseract-ocr")

ROWS = 128
BOX = (0, 0, 120, 20)  # left, top, width, height of the annotation line
_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def burn_in(path: Path, text: str, model: str | None = None) -> None:
    """Write ``text`` into the slice's pixels at the brightest stored value, as a modality would."""
    ds = pydicom.dcmread(path)
    canvas = Image.new("L", (ROWS, ROWS), 0)
    ImageDraw.Draw(canvas).text((3, 3), text, fill=255, font=ImageFont.truetype(_FONT, 11))
    pixels = ds.pixel_array.copy()
    pixels[np.asarray(canvas) > 127] = 2 ** int(ds.BitsStored) - 1
    ds.PixelData = pixels.tobytes()
    if model is not None:
        ds.ManufacturerModelName = model
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory, key, ray_cluster):
    root = tmp_path_factory.mktemp("prep-pixels")
    generate_cohort(root / "cohort", patients=2, rows=ROWS, slices=2, nodule_fraction=0.0)
    dicom = root / "cohort" / "dicom"
    unknown, known = (sorted((dicom / f"study_000{i}/series_01").glob("*.dcm")) for i in (0, 1))
    burn_in(unknown[1], "DOE^JANE 19610307")  # a device with no known regions: quarantined
    for path in known:  # a device that writes its annotation in BOX: blanked
        burn_in(path, "ROE^RITA 4711", model="ANNOTATING CT")
    regions = (DeviceRegions("medray-synth", "ANNOTATING", ROWS, ROWS, (BOX,)),)
    options = DicomOptions(clean_pixel_data=True, pixel_regions=regions, export_dicom=True)
    summary = preprocess_dicom(dicom, root / "out", key=key, options=options)
    return root / "out", summary


def test_text_left_in_the_pixels_quarantines_the_series(run):
    out, summary = run
    assert (summary.series_written, summary.series_quarantined) == (1, 1)
    records = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert [r["reason"] for r in records] == ["burned_in_text"] * 2  # the series as a whole
    assert not any("DOE" in r["message"] or "1961" in r["message"] for r in records)


def test_known_regions_are_blanked_in_the_volume_and_the_export(run):
    out, _ = run
    files = sorted((out / EXPORT_DIR).rglob("*.dcm"))
    assert len(files) == 2
    for path in files:
        ds = pydicom.dcmread(path)
        left, top, width, height = BOX
        pixels = ds.pixel_array
        assert (pixels[top:top + height, left:left + width] == pixels.min()).all()
        assert find_text(pixels) == []
        assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
        assert ds.BurnedInAnnotation == "NO"
    table = pq.read_table(out / "volumes")
    assert table.num_rows == 1
