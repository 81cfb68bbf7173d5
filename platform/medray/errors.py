"""The one root exception of medray and its few specialisations.

Messages say what was wrong and what to do about it, and never carry PHI.
"""

from __future__ import annotations

__all__ = ["MedrayError", "ConfigError", "PlacementError", "RegistryError", "DicomError", "BackendError"]


class MedrayError(Exception):
    """Root of every error medray raises on purpose."""


class ConfigError(MedrayError):
    """A configuration file or value is missing or invalid."""


class PlacementError(MedrayError):
    """No node type of the cluster can run a workload profile."""


class RegistryError(MedrayError):
    """A model registry entry is missing, malformed or tampered with."""


class DicomError(MedrayError):
    """A DICOM input cannot be used; ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class BackendError(MedrayError):
    """A model cannot run on the requested inference backend (runtime missing, accuracy check not passed)."""


class ParameterServerError(MedrayError):
    """A parameter-server shard cannot serve a request (restarted and not restored, bad arguments)."""
