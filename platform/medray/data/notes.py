"""The synthetic EMR's clinical notes, with PHI planted in them and recorded where it was planted.

One to three notes per encounter (progress, radiology, discharge, telephone), written as clinicians
write: the patient's and relatives' names in several forms, dates in six formats, ages (those over
89 are an identifier), phone and fax numbers, e-mail, SSN, MRN, account, plan and accession
numbers, portal URLs, a monitoring device's IP address, and the home address. Every planted
identifier is a :class:`PlantedPhi` (kind, text, offset), the ground truth a scrubber's recall is
measured against (:mod:`medray.privacy.notes`); the clinical sentences around them hold none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medray.data.people import PHYSICIANS, Patient

__all__ = ["NOTES_SCHEMA", "PlantedPhi", "SyntheticNotes", "draw_notes", "write_notes"]

NOTES_SCHEMA = pa.schema([
    ("note_id", pa.string()), ("mrn", pa.string()), ("encounter_id", pa.string()),
    ("written_at", pa.date32()), ("note_type", pa.string()), ("author", pa.string()), ("text", pa.string())])
_NOTE_TYPES = ("progress", "radiology", "discharge", "telephone")
_CLINICAL = ("Lungs clear to auscultation bilaterally.", "No acute distress.",
             "Chest CT shows a small pulmonary nodule in the right upper lobe.", "Denies fever or chills.",
             "Continue current inhaler regimen.", "Blood pressure well controlled on current medication.",
             "Follow-up imaging recommended in 6 months.", "Smoking cessation counselling provided.",
             "Reports mild exertional dyspnoea.", "No lymphadenopathy.", "Labs reviewed and within normal limits.",
             "Advised to return if symptoms worsen.")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


@dataclass(frozen=True)
class PlantedPhi:
    """One identifier planted in a note: its kind (an entity of :mod:`medray.privacy.notes`), the
    text planted and where it starts in the note."""

    note_id: str
    kind: str
    text: str
    start: int


@dataclass(frozen=True)
class SyntheticNotes:
    """The notes table (:data:`NOTES_SCHEMA`) and the PHI planted in it."""

    table: pa.Table
    planted: tuple[PlantedPhi, ...]


class _Note:
    """A note under construction: text pieces and the PHI they plant."""

    def __init__(self, note_id: str) -> None:
        self.note_id, self.parts, self.planted, self.length = note_id, [], [], 0

    def text(self, *pieces: str | tuple[str, str]) -> None:
        """Append ``pieces``: plain text, or (kind, text) for planted PHI."""
        for piece in pieces:
            kind, text = piece if isinstance(piece, tuple) else (None, piece)
            if kind is not None:
                self.planted.append(PlantedPhi(self.note_id, kind, text, self.length))
            self.parts.append(text)
            self.length += len(text)

    def done(self) -> str:
        return "".join(self.parts)


def _date_text(rng: np.random.Generator, d: date) -> str:
    """``d`` in one of six formats clinicians use."""
    month = _MONTHS[d.month - 1]
    forms = (d.isoformat(), f"{d.month}/{d.day}/{d.year}", f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",
             f"{month} {d.day}, {d.year}", f"{d.day} {month[:3]} {d.year}", f"{d.month}-{d.day}-{d.year}")
    return forms[int(rng.integers(len(forms)))]


def _phone_text(rng: np.random.Generator, phone: str) -> str:
    """``(617) 555-0134`` as written, or as 617-555-0134, 617.555.0134, 617 555 0134."""
    digits = "".join(c for c in phone if c.isdigit())
    a, b, c = digits[:3], digits[3:6], digits[6:]
    return (phone, f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"{a} {b} {c}")[int(rng.integers(4))]


def _name_text(rng: np.random.Generator, p: Patient) -> list[tuple[str, str] | str]:
    forms: list[list[tuple[str, str] | str]] = [
        [("PERSON", p.first), " ", ("PERSON", p.last)],
        [("PERSON", p.last.upper()), ", ", ("PERSON", p.first.upper())],
        ["Mr. " if p.sex == "M" else "Ms. ", ("PERSON", p.last)],
        [("PERSON", p.first), " ", p.middle, ". ", ("PERSON", p.last)],
    ]
    return forms[int(rng.integers(len(forms)))]


def _draw_note(rng: np.random.Generator, note_id: str, p: Patient, relative: str, day: date,
               physician: tuple[str, str]) -> tuple[str, list[PlantedPhi]]:
    n = _Note(note_id)
    age = p.age
    age_piece = ("AGE_OVER_89", str(age)) if age > 89 else str(age)
    n.text(*_name_text(rng, p), " (", ("ID", p.mrn), ") is a ", age_piece, "-year-old ",
           "woman" if p.sex == "F" else "man", " seen on ", ("DATE", _date_text(rng, day)), ". ")
    extras = [
        lambda: n.text("DOB ", ("DATE", _date_text(rng, p.birth_date)), ". "),
        lambda: n.text("Home phone ", ("PHONE", _phone_text(rng, p.phone)), ". "),
        lambda: n.text("Results faxed to ", ("PHONE", _phone_text(rng, p.phone[:-4] + "0199")), ". "),
        lambda: n.text("Patient e-mail: ", ("EMAIL", p.email), ". "),
        lambda: n.text("SSN ", ("US_SSN", p.ssn), " on file. "),
        lambda: n.text("Billing account ", ("ID", p.account_number), ", plan ", ("ID", p.insurance_plan_id), ". "),
        lambda: n.text("CT accession ", ("ID", p.accession), " reviewed. "),
        lambda: n.text("MRN: ", ("ID", p.mrn.removeprefix("MRN")), ". "),
        lambda: n.text("Lives at ", ("ADDRESS", p.street), ", ", ("ADDRESS", f"{p.city}, {p.state}"), " ",
                       ("ZIP", p.zip), ". "),
        lambda: n.text("Lives in ", ("ADDRESS", f"{p.city}, {p.state}"), " with her daughter " if p.sex == "F"
                       else " with his son ", ("PERSON", relative), " ", ("PERSON", p.last), ". "),
        lambda: n.text("Daughter ", ("PERSON", relative), " can be reached at ",
                       ("PHONE", _phone_text(rng, p.phone[:-4] + "0150")), ". "),
        lambda: n.text("Portal: ", ("URL", f"https://portal.example.org/chart/{p.mrn.lower()}"), ". "),
        lambda: n.text("Home spirometer at ", ("IP", f"10.{rng.integers(256)}.{rng.integers(256)}."
                                                      f"{rng.integers(1, 255)}"), " uploads nightly. "),
        lambda: n.text("Discussed with Dr. ", ("PERSON", physician[0]), " on ",
                       ("DATE", f"{_MONTHS[day.month - 1]} {day.day}"), ". "),
        lambda: n.text("Follow-up in ", ("DATE", f"{_MONTHS[(day.month + 5) % 12]} {day.year + 1}"), ". "),
        lambda: n.text("Aged ", age_piece, " at last visit. "),
    ]
    for i in rng.choice(len(extras), size=int(rng.integers(3, 7)), replace=False):
        n.text(_CLINICAL[int(rng.integers(len(_CLINICAL)))], " ")
        extras[i]()
    n.text("Signed: Dr. ", ("PERSON", physician[1]), " ", ("PERSON", physician[0]), ", ",
           ("DATE", _date_text(rng, day)), ".")
    return n.done(), n.planted


def draw_notes(rng: np.random.Generator, cohort: list[Patient], encounters: pa.Table) -> SyntheticNotes:
    """One to three notes per encounter of ``encounters`` (an :class:`EmrTables` table)."""
    people = {p.mrn: p for p in cohort}
    firsts = sorted({p.first for p in cohort})
    rows, planted = [], []
    for e in encounters.to_pylist():
        p = people[e["mrn"]]
        for k in range(int(rng.integers(1, 4))):
            note_id = f"{e['encounter_id']}-N{k + 1}"
            physician = PHYSICIANS[int(rng.integers(len(PHYSICIANS)))]
            day = e["admit_date"] + timedelta(days=k)
            text, phi = _draw_note(rng, note_id, p, firsts[int(rng.integers(len(firsts)))], day, physician)
            rows.append({"note_id": note_id, "mrn": p.mrn, "encounter_id": e["encounter_id"], "written_at": day,
                         "note_type": _NOTE_TYPES[int(rng.integers(len(_NOTE_TYPES)))],
                         "author": f"Dr. {physician[1]} {physician[0]}", "text": text})
            planted += phi
    return SyntheticNotes(pa.Table.from_pylist(rows, schema=NOTES_SCHEMA), tuple(planted))


def write_notes(path: Path, cohort: list[Patient], encounters: pa.Table) -> SyntheticNotes:
    """Draw the notes of ``encounters`` and write them to ``path`` (Parquet); the same encounters
    give the same notes (their random stream is seeded by the encounter IDs)."""
    ids = "\n".join(encounters["encounter_id"].to_pylist()).encode()
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(b"notes\0" + ids).digest()[:8], "big"))
    notes = draw_notes(rng, cohort, encounters)
    pq.write_table(notes.table, path)
    return notes
