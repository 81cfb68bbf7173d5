"""The synthetic cohort's fake people: identities full of PHI, a CT study each, maybe a nodule.

Every identifying attribute de-identification must find is filled in (names, MRNs, dates,
addresses, phone, email, SSN, plan and account numbers), and the rare ones are guaranteed: ages
over 89 and ZIP3 areas HIPAA Safe Harbor zeroes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np

from medray.data.anatomy import MIN_BODY_SCALE, Anatomy, Geometry, Nodule, place_nodule

__all__ = ["PHYSICIANS", "Patient", "draw_patients"]

_OLD_FRACTION = 0.1  # share of patients older than 89 (a HIPAA identifier)
_LOW_POP_ZIP_FRACTION = 0.2

# --- Small vocabularies for fake people and places --------------------------------------------
# Names are chosen so that none is a substring of an output file or folder name.
_FIRST_F = ("Jane", "Mary", "Linda", "Susan", "Karen", "Nancy", "Helen", "Ruth", "Gloria",
            "Olivia", "Fatima", "Mei", "Priya", "Rosa", "Ingrid", "Beatrice")
_FIRST_M = ("John", "Robert", "Michael", "William", "David", "Joseph", "Thomas", "George",
            "Kenneth", "Ahmed", "Hiroshi", "Carlos", "Dmitri", "Kwame", "Tobias", "Walter")
_LAST = ("Doe", "Smith", "Johnson", "Williams", "Brown", "Garcia", "Miller", "Wilson", "Moore",
         "Taylor", "Anderson", "Thomas", "Jackson", "White", "Harris", "Martin", "Thompson",
         "Nguyen", "Okafor", "Kowalski", "Haddad", "Yamamoto", "Fitzgerald", "Lindqvist")
_STREETS = ("Maple Ave", "Oak St", "Pine Rd", "Elm St", "Cedar Ln", "Main St", "Washington Blvd",
            "Lakeview Dr", "Hillcrest Rd", "Sunset Ave", "Birch Ct", "Willow Way")
# (city, state, ZIP3, phone area code)
_CITIES = (("Boston", "MA", "021", "617"), ("Springfield", "IL", "627", "217"),
           ("Columbus", "OH", "432", "614"), ("Denver", "CO", "802", "303"),
           ("Portland", "OR", "972", "503"), ("Atlanta", "GA", "303", "404"),
           ("Madison", "WI", "537", "608"), ("Sacramento", "CA", "958", "916"))
# ZIP3 prefixes HIPAA Safe Harbor says to zero out (population under 20,000).
_LOW_POP_CITIES = (("Claremont", "NH", "036", "603"), ("Island Pond", "VT", "059", "802"),
                   ("New York", "NY", "102", "212"), ("Washington", "DC", "203", "202"),
                   ("Grand Marais", "MN", "556", "218"), ("Valentine", "NE", "692", "402"),
                   ("Amarillo", "TX", "790", "806"), ("Yellowstone", "WY", "821", "307"),
                   ("Rawlins", "WY", "823", "307"), ("Jackson", "WY", "830", "307"),
                   ("Pinedale", "WY", "831", "307"), ("Socorro", "NM", "878", "575"),
                   ("Truth or Consequences", "NM", "879", "575"), ("Tucumcari", "NM", "884", "575"),
                   ("Las Vegas", "NV", "890", "702"), ("Ely", "NV", "893", "775"))
_INSTITUTIONS = (("Mercy Valley Medical Center", "1200 Hospital Dr, Springfield, IL 62701"),
                 ("St. Example General Hospital", "45 Harbor St, Boston, MA 02114"),
                 ("Lakeside University Hospital", "900 Campus Rd, Madison, WI 53792"))
# (last name, first name): referring physicians here, attending physicians in the EMR.
PHYSICIANS = (("Chen", "Maria"), ("Patel", "Rahul"), ("O'Brien", "Sean"), ("Novak", "Eva"),
              ("Adeyemi", "Tunde"), ("Larsen", "Kirsten"))
_OPERATORS = (("Reyes", "Alex"), ("Kim", "Jordan"), ("Schultz", "Dana"))


@dataclass(frozen=True)
class Patient:
    """One fake person, their CT study, and (maybe) a nodule."""

    index: int
    mrn: str
    first: str
    middle: str
    last: str
    sex: str
    birth_date: date
    study_at: datetime
    street: str
    city: str
    state: str
    zip: str
    phone: str
    email: str
    ssn: str
    insurance_plan_id: str
    account_number: str
    accession: str
    institution: tuple[str, str]
    referring: tuple[str, str]
    operator: tuple[str, str]
    anatomy: Anatomy
    nodule: Nodule | None

    @property
    def age(self) -> int:
        """Whole years at the study date."""
        d, b = self.study_at.date(), self.birth_date
        return d.year - b.year - ((d.month, d.day) < (b.month, b.day))

    @property
    def dicom_name(self) -> str:
        return f"{self.last}^{self.first}^{self.middle}".upper()

    @property
    def series_dir(self) -> str:
        return f"dicom/study_{self.index:04d}/series_01"


def draw_patients(rng: np.random.Generator, n: int, geom: Geometry,
                  nodule_fraction: float) -> list[Patient]:
    """``n`` people, exactly ``round(n * nodule_fraction)`` of them with a nodule."""
    has_nodule = _pick(rng, n, round(n * nodule_fraction))
    # Rare identifiers are guaranteed (not left to chance) so de-identification is always tested.
    is_old = _pick(rng, n, _share(n, _OLD_FRACTION))
    low_pop = _pick(rng, n, _share(n, _LOW_POP_ZIP_FRACTION))
    mrns = rng.choice(9_000_000, size=n, replace=False) + 1_000_000
    accessions = rng.choice(90_000_000, size=n, replace=False) + 10_000_000
    return [_draw_patient(rng, i, f"MRN{mrns[i]}", f"A{accessions[i]}", bool(is_old[i]),
                          bool(low_pop[i]), bool(has_nodule[i]), geom) for i in range(n)]


def _share(n: int, fraction: float) -> int:
    """``round(n * fraction)``, but at least one once the cohort has 5 patients."""
    return max(1, round(n * fraction)) if n >= 5 else round(n * fraction)


def _pick(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """A boolean mask with exactly ``count`` of ``n`` entries set, chosen at random."""
    mask = np.zeros(n, bool)
    mask[rng.choice(n, size=count, replace=False)] = True
    return mask


def _draw_patient(rng: np.random.Generator, index: int, mrn: str, accession: str, old: bool,
                  low_pop: bool, nodule: bool, geom: Geometry) -> Patient:
    sex = str(rng.choice(["F", "M"]))
    first = str(rng.choice(_FIRST_F if sex == "F" else _FIRST_M))
    last = str(rng.choice(_LAST))
    study_at = datetime(2018, 1, 1, 7) + timedelta(days=int(rng.integers(0, 5 * 365)),
                                                   seconds=int(rng.integers(0, 12 * 3600)))
    age = int(rng.integers(90, 100)) if old else int(rng.integers(25, 86))
    # A birthday 1..360 days before the study's anniversary makes the age exactly ``age``
    # (day 28 at most, so that no anniversary falls on 29 February).
    anniversary = date(study_at.year - age, study_at.month, min(study_at.day, 28))
    birth = anniversary - timedelta(days=int(rng.integers(1, 361)))
    cities = _LOW_POP_CITIES if low_pop else _CITIES
    city, state, zip3, area = cities[int(rng.integers(len(cities)))]
    anatomy = Anatomy.for_patient(geom, float(rng.uniform(MIN_BODY_SCALE, 1.0)))
    return Patient(
        index=index, mrn=mrn, first=first, middle=chr(ord("A") + int(rng.integers(26))),
        last=last, sex=sex, birth_date=birth, study_at=study_at,
        street=f"{int(rng.integers(1, 9999))} {rng.choice(_STREETS)}", city=city, state=state,
        zip=f"{zip3}{int(rng.integers(0, 100)):02d}",
        phone=f"({area}) {int(rng.integers(200, 999))}-{int(rng.integers(0, 10000)):04d}",
        email=f"{first}.{last}{int(rng.integers(1, 100))}@example.com".lower(),
        ssn=f"{int(rng.integers(100, 666)):03d}-{int(rng.integers(1, 100)):02d}-"
            f"{int(rng.integers(1, 10000)):04d}",
        insurance_plan_id=f"HP{int(rng.integers(10**8, 10**9))}",
        account_number=f"ACCT{int(rng.integers(10**7, 10**8))}", accession=accession,
        institution=_INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
        referring=PHYSICIANS[int(rng.integers(len(PHYSICIANS)))],
        operator=_OPERATORS[int(rng.integers(len(_OPERATORS)))],
        anatomy=anatomy, nodule=place_nodule(rng, geom, anatomy) if nodule else None)
