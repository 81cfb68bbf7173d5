"""What a registered model finds: its answer labels, and the codes its reports carry.

A model's manifest names its finding (``ModelManifest.finding``); the diagnosis service's JSON
answer and FHIR DiagnosticReport take every label and code from here, so each expert reports its
own study type, body site and finding. Codes: the study is a LOINC radiology code (the report's
``code``), the body site SNOMED CT (the Observation's ``bodySite``, FHIR R4 Observation), the
positive finding ICD-10-CM (the report's ``conclusionCode``, as the synthetic cohort's EMR codes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medray.errors import RegistryError

__all__ = ["FINDINGS", "FindingSpec", "finding_spec"]

_LOINC = "http://loinc.org"
_SNOMED = "http://snomed.info/sct"
_ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"


@dataclass(frozen=True)
class FindingSpec:
    """One kind of finding: ``positive``/``negative`` are the answer's labels, ``study`` the LOINC
    study code, ``body_site`` the SNOMED CT site, ``code`` the positive finding's ICD-10-CM code;
    ``title`` names the finding in sentences ("Lung nodule"), ``observation`` the probability."""

    name: str
    title: str
    positive: str
    negative: str
    study: tuple[str, str]  # (LOINC code, display)
    body_site: tuple[str, str]  # (SNOMED CT code, display)
    code: tuple[str, str]  # (ICD-10-CM code, display)

    @property
    def observation(self) -> str:
        return f"{self.title} probability (machine learning model)"

    def label(self, positive: bool) -> str:
        return self.positive if positive else self.negative

    def coding(self, which: str) -> dict[str, Any]:
        """The FHIR Coding of ``study``, ``body_site`` or ``code``."""
        system = {"study": _LOINC, "body_site": _SNOMED, "code": _ICD10}[which]
        code, display = getattr(self, which)
        return {"system": system, "code": code, "display": display}


FINDINGS: dict[str, FindingSpec] = {f.name: f for f in (
    FindingSpec("lung-nodule", "Lung nodule", "nodule_suspected", "no_nodule_detected",
                study=("24627-2", "CT Chest"), body_site=("39607008", "Lung structure"),
                code=("R91.1", "Solitary pulmonary nodule")),
    FindingSpec("intracranial-hemorrhage", "Intracranial hemorrhage", "hemorrhage_suspected",
                "no_hemorrhage_detected", study=("24725-4", "CT Head"),
                body_site=("12738006", "Brain structure"),
                code=("I62.9", "Nontraumatic intracranial hemorrhage, unspecified")),
)}


def finding_spec(name: str) -> FindingSpec:
    """The finding called ``name``; :class:`~medray.errors.RegistryError` naming the known ones otherwise."""
    try:
        return FINDINGS[name]
    except KeyError:
        raise RegistryError(f"unknown finding {name!r}: known findings are {sorted(FINDINGS)}") from None
