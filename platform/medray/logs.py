"""Logging for medray processes: plain text by default, JSON lines with ``MEDRAY_LOG_FORMAT=json``.

Log records must never carry PHI: log pseudonyms, counts, reason codes and timings, never names,
patient IDs, original UIDs, dates of birth or input file names.
"""

from __future__ import annotations

import json
import logging
import os
import time

__all__ = ["FORMAT_ENV", "JsonFormatter", "get_logger"]

FORMAT_ENV = "MEDRAY_LOG_FORMAT"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra={...}`` fields."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def get_logger(name: str) -> logging.Logger:
    """A logger under ``medray.`` with one stderr handler in the configured format."""
    logger = logging.getLogger(name if name.startswith("medray") else f"medray.{name}")
    root = logging.getLogger("medray")
    if not root.handlers:
        handler = logging.StreamHandler()
        if os.environ.get(FORMAT_ENV, "text").lower() == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("MEDRAY_LOG_LEVEL", "INFO").upper())
        root.propagate = False
    return logger
