"""The request bodies ``POST /v1/diagnose`` takes: DICOM over HTTP, from :mod:`medray.dicom.multipart`.

One codec serves the service and its clients (the burst harness, the benchmarks): it lives in
medray, and this module names the part of it the diagnosis API uses.
"""

from medray.dicom.multipart import DICOM, MULTIPART, BodyError, encode_series, media_type, split_body

__all__ = ["DICOM", "MULTIPART", "BodyError", "media_type", "split_body", "encode_series"]
