"""DICOM over HTTP: one ``application/dicom`` instance, or a series as DICOMweb STOW-RS sends it.

STOW-RS (DICOM PS3.18 §10.5) posts ``multipart/related; type="application/dicom"; boundary=…``,
one DICOM Part 10 file per part. :func:`split_body` turns either form into a list of instances (a
service reading request bodies); :func:`encode_series` builds the multipart form (its clients, the
tests, the demo and the benchmarks).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from email.message import Message

from medray.errors import MedrayError

__all__ = ["DICOM", "MULTIPART", "BodyError", "media_type", "split_body", "encode_series"]

DICOM = "application/dicom"
MULTIPART = "multipart/related"


class BodyError(MedrayError):
    """A request body or its Content-Type cannot be used; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def _parse(content_type: str) -> Message:
    header = Message()
    header["content-type"] = content_type
    return header


def media_type(content_type: str | None) -> str:
    """The lower-case media type of a Content-Type header (``""`` when absent)."""
    return _parse(content_type).get_content_type() if content_type else ""


def split_body(content_type: str | None, body: bytes) -> list[bytes]:
    """The DICOM instances of a request body; BodyError 415 for other media types, 400 when malformed."""
    kind = media_type(content_type)
    if kind == DICOM:
        return [body]
    if kind != MULTIPART:
        raise BodyError(415, "unsupported_media_type",
                        f"Content-Type must be {DICOM} or {MULTIPART}; type=\"{DICOM}\" (got {kind or 'none'})")
    header = _parse(content_type or "")
    part_type = (header.get_param("type") or "").lower()
    if part_type and part_type != DICOM:
        raise BodyError(415, "unsupported_media_type",
                        f"multipart/related parts must be {DICOM} (type parameter), got {part_type!r}")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise BodyError(400, "malformed_multipart", "multipart/related needs a boundary parameter")
    return _parts(body, boundary.encode("latin-1"))


def _parts(body: bytes, boundary: bytes) -> list[bytes]:
    delimiter = b"\r\n--" + boundary
    # The first delimiter may open the body without a preceding CRLF.
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 3:
        raise BodyError(400, "malformed_multipart", "the multipart body has no complete part: check the boundary")
    instances = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise BodyError(400, "malformed_multipart", "a multipart part has no header/body separator")
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-type" and media_type(value.strip()) != DICOM:
                raise BodyError(415, "unsupported_media_type", f"every part must be {DICOM}")
        instances.append(content)
    else:
        raise BodyError(400, "malformed_multipart", "the multipart body is not closed (truncated upload?)")
    if not instances:
        raise BodyError(400, "malformed_multipart", "the multipart body holds no instance")
    return instances


def encode_series(instances: Sequence[bytes], boundary: str | None = None) -> tuple[bytes, str]:
    """A STOW-RS style body for ``instances`` and its Content-Type header value."""
    boundary = boundary or f"medray-{secrets.token_hex(12)}"
    parts = [b"--" + boundary.encode() + b"\r\nContent-Type: " + DICOM.encode() + b"\r\n\r\n" + data + b"\r\n"
             for data in instances]
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'{MULTIPART}; type="{DICOM}"; boundary={boundary}'
