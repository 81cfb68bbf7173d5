"""Compressed pixel data in: the transfer syntaxes medray decodes, and through which decoders.

Uncompressed data (Explicit and Implicit VR Little Endian) is viewed directly by
:mod:`medray.dicom.volume`; everything else goes through pydicom's pixel-data decoders
(``pydicom.pixels.get_decoder``), which call the maintained codec plugins installed beside it:
pylibjpeg-libjpeg (JPEG processes 1, 2/4 and 14, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000 and
HTJ2K), pylibjpeg-rle or pydicom's own RLE decoder, Pillow and gdcm where installed. The encapsulated
encodings are those of PS3.5 Annex A.4 (and A.4.11 for HTJ2K); :data:`CODECS` names each one medray
accepts, whether it is lossless, and which package decodes it, so that a file whose decoder is
missing is refused (``unsupported_transfer_syntax``) with the package to install.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = ["CODECS", "Codec", "decodable", "decode_frame", "unsupported_message"]


@dataclass(frozen=True)
class Codec:
    """How one transfer syntax's pixel data is decoded: ``lossless`` as the syntax declares,
    ``packages`` the requirement that brings its decoder (pip names)."""

    lossless: bool
    packages: str


_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"

# PS3.5 Annex A: every transfer syntax whose pixel data medray decodes.
CODECS: dict[str, Codec] = {
    ExplicitVRLittleEndian: Codec(True, "pydicom"),
    ImplicitVRLittleEndian: Codec(True, "pydicom"),
    ExplicitVRBigEndian: Codec(True, "pydicom"),
    DeflatedExplicitVRLittleEndian: Codec(True, "pydicom"),
    JPEGBaseline8Bit: Codec(False, _LIBJPEG),  # A.4.1, process 1
    JPEGExtended12Bit: Codec(False, _LIBJPEG),  # A.4.1, processes 2 and 4
    JPEGLossless: Codec(True, _LIBJPEG),  # A.4.1, process 14, any predictor
    JPEGLosslessSV1: Codec(True, _LIBJPEG),  # A.4.1, process 14, first-order prediction
    JPEGLSLossless: Codec(True, _LIBJPEG),  # A.4.3
    JPEGLSNearLossless: Codec(False, _LIBJPEG),  # A.4.3: each value within NEAR of the original
    JPEG2000Lossless: Codec(True, _OPENJPEG),  # A.4.4
    JPEG2000: Codec(False, _OPENJPEG),  # A.4.4, reversible or irreversible
    HTJ2KLossless: Codec(True, _OPENJPEG),  # A.4.11
    HTJ2KLosslessRPCL: Codec(True, _OPENJPEG),  # A.4.11
    HTJ2K: Codec(False, _OPENJPEG),  # A.4.11
    RLELossless: Codec(True, "pylibjpeg pylibjpeg-rle"),  # A.4.2
}


@functools.lru_cache(maxsize=64)  # bounded: the syntax comes from the file, any string at all
def decodable(syntax: str) -> bool:
    """Whether this transfer syntax is one of :data:`CODECS` and its decoder is installed."""
    if syntax not in CODECS:
        return False
    try:
        return get_decoder(UID(syntax)).is_available
    except NotImplementedError:  # pydicom knows no decoder for it at all
        return False


def unsupported_message(syntax: str) -> str:
    """Why pixel data of ``syntax`` cannot be decoded here, and what to do (quotes no file value
    but a registered transfer syntax's name)."""
    uid = UID(syntax)
    codec = CODECS.get(syntax)
    if codec is None:
        name = uid.name if uid.is_transfer_syntax else "an unknown or missing transfer syntax"
        return (f"pixel data encoded as {name} is not decoded by medray: transcode it to Explicit VR "
                "Little Endian (or JPEG Lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE) before sending it")
    return (f"pixel data encoded as {uid.name} needs a decoder that is not installed: "
            f"pip install {codec.packages} (or transcode it to Explicit VR Little Endian)")


def decode_frame(ds: Dataset) -> np.ndarray:
    """The stored values of a single-frame instance's compressed (or big-endian, deflated) pixel
    data, as pydicom's decoder for its transfer syntax gives them: signed values sign-extended,
    nothing rescaled, colour converted to RGB where the syntax's photometric interpretation says.

    Whatever a codec raises on a damaged codestream propagates: callers decide the reason.
    """
    # The decoder's as_array does not cache the array on the dataset, unlike ds.pixel_array.
    stored, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds)
    return stored
