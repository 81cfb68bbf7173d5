"""DICOM in: Part 10 parsing, the header sniffer, instances to a volume, value parsing.

:mod:`~medray.dicom.part10` (the fast Explicit VR Little Endian reader), :mod:`~medray.dicom.sniff`
(the grouping UIDs from a file's first bytes), :mod:`~medray.dicom.volume` (validated instances to a
Hounsfield-unit volume), :mod:`~medray.dicom.codecs` (the compressed transfer syntaxes decoded and
their decoders), :mod:`~medray.dicom.values` (ages and dates) and :mod:`~medray.dicom.quiet`
(keeping pydicom's warnings and logs, which quote values, quiet) and :mod:`~medray.dicom.multipart`
(DICOM over HTTP: the bodies ``POST /v1/diagnose`` takes), :mod:`~medray.dicom.net` (DICOM networking:
the C-STORE/C-ECHO receiver, series completion, the C-STORE sender), :mod:`~medray.dicom.sr` (a finding
as a Structured Report) and :mod:`~medray.dicom.orthanc` (a private Orthanc PACS for tests and demo).
"""
