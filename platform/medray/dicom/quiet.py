"""Keeping pydicom quiet: its warnings and log records quote element values and file positions,
which can be PHI, so none may reach a console or a log.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_pydicom", "silenced_warnings"]


def quiet_pydicom() -> None:
    """Stop pydicom logging in this process: its warnings quote element values (PHI)."""
    logging.getLogger("pydicom").propagate = False


@contextmanager
def silenced_warnings(*, record: bool = False) -> Iterator[list[warnings.WarningMessage]]:
    """Silence warnings inside the block; with ``record``, every one is kept in the list yielded
    (for callers that read them, never to show them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always" if record else "ignore")
        yield caught
