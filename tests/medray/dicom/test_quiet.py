"""Keeping pydicom quiet: no warning shown, recorded ones readable, no log record propagated."""

from __future__ import annotations

import logging
import warnings

from medray.dicom.quiet import quiet_pydicom, silenced_warnings


def test_warnings_are_silenced_or_recorded(recwarn):
    with silenced_warnings() as caught:
        warnings.warn("PatientName 'DOE^JANE' is invalid", UserWarning)
    assert caught == [] and len(recwarn) == 0
    with silenced_warnings(record=True) as caught:
        warnings.warn("End of file reached", UserWarning)
        warnings.warn("End of file reached", UserWarning)  # every one, not once per place
    assert [str(w.message) for w in caught] == ["End of file reached"] * 2 and len(recwarn) == 0


def test_pydicom_log_records_stop_at_its_logger(monkeypatch):
    logger = logging.getLogger("pydicom")
    monkeypatch.setattr(logger, "propagate", True)
    quiet_pydicom()
    assert logger.propagate is False
