"""medray.dicom.codecs: compressed transfer syntaxes decode equal to their uncompressed twins.

Two kinds of evidence: the real compressed files pydicom ships (encoded by other toolkits) against
the uncompressed file they were made from, and a CT slice encoded here by imagecodecs (libjpeg-turbo,
CharLS, OpenJPEG, OpenJPH) in every syntax pydicom's files do not cover, read back through the
whole pipeline path (read_instance, volume_from_datasets, Volume.hu).
"""

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from medray.dicom import codecs
from medray.dicom.volume import read_instance, volume_from_datasets
from medray.errors import DicomError
from tests.medray.dicom.test_volume import assert_reason, make_slice

imagecodecs = pytest.importorskip("imagecodecs", reason="the test encoders: pip install imagecodecs")


def _testdata(name: str) -> str:
    return get_testdata_file(name, download=False)  # shipped inside pydicom: never downloaded


def _hu(source, modality: str = "CT") -> np.ndarray:
    return volume_from_datasets([read_instance(source)], allow_modalities=(modality,)).hu


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm"])
def test_pydicoms_lossless_files_decode_equal_to_their_uncompressed_twin(name):
    np.testing.assert_array_equal(_hu(_testdata(name), "MR"), _hu(_testdata("MR_small.dcm"), "MR"))


def test_pydicoms_jpeg_baseline_file_decodes_within_its_loss():
    # Colour, so not a volume: decoded as the pipeline's decoder does, then compared as RGB.
    lossy = codecs.decode_frame(pydicom.dcmread(_testdata("SC_rgb_small_odd_jpeg.dcm")))
    exact = pydicom.dcmread(_testdata("SC_rgb_small_odd.dcm")).pixel_array
    assert lossy.shape == exact.shape
    assert np.abs(lossy.astype(int) - exact.astype(int)).max() <= 8


def test_a_real_lossy_jpeg2000_ct_decodes_to_plausible_hu():
    from pydicom.pixels import apply_modality_lut

    hu = _hu(_testdata("693_J2KI.dcm"))[0]
    ds = pydicom.dcmread(_testdata("693_J2KI.dcm"))
    np.testing.assert_array_equal(hu, apply_modality_lut(ds.pixel_array, ds))
    in_view = hu[hu > -2000]  # outside the scanner's field of view: padding at -3040
    low, high = np.percentile(in_view, [5, 99.9])
    assert -1100 < low and high < 3100 and (in_view < -900).mean() > 0.2  # air around a head


# A CT-like 12-bit slice (stored 0..4095, HU = stored - 1024): smooth anatomy, edges and noise.
_ROWS = _COLUMNS = 64


def _ct_slice() -> np.ndarray:
    y, x = np.mgrid[:_ROWS, :_COLUMNS]
    body = ((y - 32) ** 2 + (x - 30) ** 2 < 26 ** 2) * 1040 + ((y - 20) ** 2 + (x - 40) ** 2 < 36) * 900
    noise = np.random.default_rng(3).integers(0, 40, (_ROWS, _COLUMNS))
    return (24 + body + noise + x * 3).clip(0, 4095).astype(np.uint16)


def _encode(syntax: str, stored: np.ndarray) -> tuple[bytes, int]:
    """One frame of ``stored`` encoded in ``syntax``, and the bits stored it is declared with."""
    if syntax == JPEGLosslessSV1:
        return imagecodecs.ljpeg_encode(stored, bitspersample=12), 12
    if syntax == JPEGLossless:  # process 14 with predictor 6, not the first-order one
        return imagecodecs.jpeg8_encode(stored, lossless=True, predictor=6, bitspersample=12), 12
    if syntax == JPEGExtended12Bit:
        return imagecodecs.jpeg8_encode(stored, level=95, bitspersample=12), 12
    if syntax == JPEGBaseline8Bit:
        return imagecodecs.jpeg8_encode((stored >> 4).astype(np.uint8), level=95), 8
    if syntax == JPEGLSLossless:
        return imagecodecs.jpegls_encode(stored, level=0), 16
    if syntax == JPEGLSNearLossless:
        return imagecodecs.jpegls_encode(stored, level=_NEAR), 16
    if syntax == JPEG2000Lossless:
        return imagecodecs.jpeg2k_encode(stored, level=0, codecformat="J2K", reversible=True), 16
    if syntax == JPEG2000:
        return imagecodecs.jpeg2k_encode(stored, level=80, codecformat="J2K", reversible=False), 16
    if syntax in (HTJ2KLossless, HTJ2KLosslessRPCL):
        return imagecodecs.htj2k_encode(stored, reversible=True), 16
    if syntax == HTJ2K:
        return imagecodecs.htj2k_encode(stored, reversible=False), 16
    raise AssertionError(syntax)


_NEAR = 3
# The loss each syntax declares: 0 for the lossless ones, NEAR for JPEG-LS near-lossless (T.87),
# and for the irreversible transforms the error that the quality used here keeps to (in HU; the
# 8-bit baseline: 8 of its levels of 16 HU).
_LOSS = {JPEGLosslessSV1: 0, JPEGLossless: 0, JPEGLSLossless: 0, JPEG2000Lossless: 0, HTJ2KLossless: 0,
         HTJ2KLosslessRPCL: 0, JPEGLSNearLossless: _NEAR, JPEGExtended12Bit: 40, JPEG2000: 30, HTJ2K: 2,
         JPEGBaseline8Bit: 8 * 16}


@pytest.mark.parametrize("syntax", list(_LOSS), ids=lambda s: s.name)
def test_every_compressed_syntax_decodes_equal_to_the_uncompressed_slice(syntax):
    stored = _ct_slice()
    frame, bits = _encode(syntax, stored)
    expected_stored = (stored >> 4) << 4 if bits == 8 else stored
    extra = {"BitsStored": bits, "HighBit": bits - 1}
    if bits == 8:
        extra.update(BitsAllocated=8, RescaleSlope=16)
    lossless = syntax not in (JPEGLSNearLossless, JPEGExtended12Bit, JPEG2000, HTJ2K, JPEGBaseline8Bit)
    assert codecs.CODECS[syntax].lossless is lossless
    data = make_slice(0.0, rows=_ROWS, columns=_COLUMNS, syntax=syntax, pixel_data=encapsulate([frame]),
                      **extra)
    reference = make_slice(0.0, rows=_ROWS, columns=_COLUMNS, pixel_data=expected_stored.tobytes())
    got, want = _hu(data)[0], _hu(reference)[0]
    assert got.shape == (_ROWS, _COLUMNS)
    error = np.abs(got - want).max()
    assert error <= _LOSS[syntax], (syntax.name, error)
    if not lossless:  # the bound is not vacuous: these encoders did lose something
        assert error > 0


def test_the_rle_encoding_pydicom_writes_reads_back_equal(tmp_path):
    reference = make_slice(0.0, rows=_ROWS, columns=_COLUMNS, pixel_data=_ct_slice().tobytes())
    ds = pydicom.dcmread(io.BytesIO(reference))
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(_hu(tmp_path / "rle.dcm"), _hu(reference))


def test_a_syntax_whose_decoder_is_missing_is_refused_naming_the_package(monkeypatch):
    decoder = get_decoder(JPEGLosslessSV1)
    monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    codecs.decodable.cache_clear()
    try:
        frame, _ = _encode(JPEGLosslessSV1, _ct_slice())
        with pytest.raises(DicomError) as excinfo:
            read_instance(make_slice(0.0, rows=_ROWS, columns=_COLUMNS, syntax=JPEGLosslessSV1,
                                     pixel_data=encapsulate([frame])))
        assert_reason(excinfo, "unsupported_transfer_syntax")
        assert "pip install pylibjpeg pylibjpeg-libjpeg" in excinfo.value.message
        assert "Process 14" in excinfo.value.message
    finally:
        codecs.decodable.cache_clear()
