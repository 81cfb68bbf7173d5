"""medray.privacy.pixels: Tesseract finds text planted in synthetic CT slices; known regions blanked."""

import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from medray.errors import ConfigError, DicomError
from medray.privacy import pixels
from medray.privacy.pixels import DeviceRegions, clean_pixels, find_text

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="Tesseract OCR not installed: apt-get install tesseract-ocr")

SIZE = 256
NAME, BIRTH, MRN = "DOE^JANE", "1961-03-07", "MRN 4711"
TOP = (0, 0, 200, 24)  # left, top, width, height of the top line of annotation
BOTTOM = (140, 228, 116, 28)
_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # fonts-dejavu-core, a Tesseract dependency


def ct_slice(lines: dict[tuple[int, int], str] = {}) -> np.ndarray:
    """A 12-bit CT-like slice (a body disc, noise) with ``lines`` of text burned in at full white."""
    y, x = np.mgrid[:SIZE, :SIZE]
    body = ((y - 128) ** 2 + (x - 128) ** 2 < 100 ** 2) * 1040
    stored = body + np.random.default_rng(0).integers(0, 40, (SIZE, SIZE))
    canvas = Image.new("L", (SIZE, SIZE), 0)
    draw, font = ImageDraw.Draw(canvas), ImageFont.truetype(_FONT, 12)
    for (left, top), text in lines.items():
        draw.text((left, top), text, fill=255, font=font)
    text = np.asarray(canvas) > 127
    return np.where(text, 4095, stored).astype(np.uint16)


ANNOTATED = {(4, 4): f"{NAME} {BIRTH}", (150, 236): MRN}


def device(model: str = "SOMATOM") -> Dataset:
    ds = Dataset()
    ds.Manufacturer, ds.ManufacturerModelName, ds.Rows, ds.Columns = "SIEMENS", model, SIZE, SIZE
    return ds


REGIONS = [DeviceRegions("SIEMENS", "SOMATOM", SIZE, SIZE, (TOP, BOTTOM))]


def inside(box, region) -> bool:
    left, top, width, height = region
    return left <= box.left and box.left + box.width <= left + width and top <= box.top \
        and box.top + box.height <= top + height


def test_ocr_finds_planted_names_dates_and_ids():
    found = find_text(ct_slice(ANNOTATED))
    assert len(found) >= 3 and all(inside(b, TOP) or inside(b, BOTTOM) for b in found)
    assert any(inside(b, BOTTOM) for b in found) and any(inside(b, TOP) for b in found)


def test_known_device_regions_are_blanked_and_the_image_passes():
    image = ct_slice(ANNOTATED)
    cleaned = clean_pixels(device(), image, REGIONS)
    assert cleaned is not image and (image == ct_slice(ANNOTATED)).all()  # the input is not changed
    left, top, width, height = TOP
    assert (cleaned[top:top + height, left:left + width] == image.min()).all()
    outside = np.ones(image.shape, bool)
    for left, top, width, height in (TOP, BOTTOM):
        outside[top:top + height, left:left + width] = False
    assert (cleaned[outside] == image[outside]).all()


@pytest.mark.parametrize("regions, model", [
    (REGIONS, "OTHER"),  # another device: nothing blanked
    ([DeviceRegions("SIEMENS", "", SIZE, SIZE, (TOP,))], "X"),  # this device, the bottom line left
])
def test_text_that_cannot_be_cleared_is_refused_without_quoting_it(regions, model):
    with pytest.raises(DicomError) as raised:
        clean_pixels(device(model), ct_slice(ANNOTATED), regions)
    assert raised.value.reason == "burned_in_text"
    for phi in ("DOE", "JANE", "1961", "4711"):
        assert phi not in str(raised.value)


def test_a_clean_image_is_returned_as_it_is():
    image = ct_slice()  # OCR finds nothing in it
    assert clean_pixels(device("OTHER"), image, REGIONS) is image


def test_missing_tesseract_is_one_actionable_line(monkeypatch):
    monkeypatch.setattr(pixels.shutil, "which", lambda name: None)
    pixels._pytesseract.cache_clear()
    try:
        with pytest.raises(ConfigError, match="apt-get install tesseract-ocr"):
            pixels.require_tesseract()
    finally:
        pixels._pytesseract.cache_clear()


def test_regions_outside_the_image_are_refused():
    with pytest.raises(ConfigError):
        DeviceRegions("SIEMENS", "", 64, 64, ((60, 0, 10, 10),))
    with pytest.raises(ConfigError):
        DeviceRegions("SIEMENS", "", 64, 64, ())
