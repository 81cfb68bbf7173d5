"""A de-identification key file for demos, notebooks and tests (never a key in code).

Production keys come from the hospital's secret store, as ``$MEDRAY_DEID_KEY`` or a 0600 file
(:func:`medray.pseudonym.load_key`); keep them stable and backed up: a new key means new
pseudonyms, so outputs of two keys do not join.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from medray.pseudonym import load_key

__all__ = ["ensure_key_file"]


def ensure_key_file(path: str | Path) -> Path:
    """Create ``path`` holding a fresh random key (mode 0600) unless it exists; return the path.

    An existing file is checked with :func:`~medray.pseudonym.load_key` (mode and length).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL with mode 0600: the secret is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        load_key(path)
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path
