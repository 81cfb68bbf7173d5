"""A deterministic synthetic cohort: chest CT series plus linked EMR tables.

Every later stage (de-identification, preprocessing, training, serving) runs on this cohort, so
it is realistic where those stages look: CT geometry and HU, linked EMR tables, and fake PHI in
every identifying attribute (names, MRNs, dates, addresses, a private tag block, free-text
notes, ages over 89, low-population ZIP3 prefixes) for de-identification to find.

Layout written under ``out_dir`` (file and folder names are indexes only, never PHI)::

    dicom/study_0000/series_01/slice_000.dcm   one CT series per patient, one study each
    emr/patients.parquet  emr/encounters.parquet  emr/labs.csv  emr/diagnoses.csv   (by mrn)
    ground_truth.parquet   nodule presence, centre (patient mm) and radius per series
    cohort.json            seed, parameters and counts

The same seed and arguments give byte-identical files; nothing is taken from the wall clock.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from itertools import product
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from medray.errors import ConfigError

__all__ = ["CohortSummary", "generate_cohort"]

FORMAT_VERSION = 1

# --- HU of the phantom's tissues -------------------------------------------------------------
_HU_AIR = -1000.0
_HU_FAT = -100.0
_HU_SOFT = 40.0
_HU_LUNG = -850.0
_HU_BONE = 700.0
_HU_NODULE = 30.0
_LUNG_TEXTURE_SD = 20.0
_NOISE_SD = 15.0
_RESCALE_INTERCEPT = -1024.0
_BITS_STORED = 12

_NODULE_RADIUS_MM = (6.0, 12.0)
_MIN_BODY_SCALE = 0.92  # patients vary in size; the smallest must still fit a nodule
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
_PHYSICIANS = (("Chen", "Maria"), ("Patel", "Rahul"), ("O'Brien", "Sean"), ("Novak", "Eva"),
               ("Adeyemi", "Tunde"), ("Larsen", "Kirsten"))
_OPERATORS = (("Reyes", "Alex"), ("Kim", "Jordan"), ("Schultz", "Dana"))
_DEPARTMENTS = ("Internal Medicine", "Pulmonology", "Emergency", "Cardiology")
_VISIT_REASONS = ("shortness of breath", "chronic cough", "chest pain", "routine follow-up",
                  "fatigue", "hypertension management")
_CT_INDICATIONS = ("persistent cough", "abnormal chest radiograph", "smoking history",
                   "dyspnoea on exertion")
# (LOINC, name, unit, mean, sd)
_LABS = (("2160-0", "Creatinine", "mg/dL", 1.0, 0.25), ("718-7", "Hemoglobin", "g/dL", 13.5, 1.5),
         ("2345-7", "Glucose", "mg/dL", 105.0, 25.0), ("6690-2", "WBC", "10*3/uL", 7.5, 2.0),
         ("4548-4", "Hemoglobin A1c", "%", 5.9, 0.8), ("2951-2", "Sodium", "mmol/L", 139.0, 3.0))
_NODULE_DX = ("R91.1", "Solitary pulmonary nodule")
_OTHER_DX = (("I10", "Essential (primary) hypertension"),
             ("E11.9", "Type 2 diabetes mellitus without complications"),
             ("J44.9", "Chronic obstructive pulmonary disease, unspecified"),
             ("E78.5", "Hyperlipidemia, unspecified"),
             ("J45.909", "Unspecified asthma, uncomplicated"),
             ("R05.9", "Cough, unspecified"))

_OUTPUTS = frozenset({"dicom", "emr", "ground_truth.parquet", "cohort.json"})


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`generate_cohort` wrote."""

    out_dir: Path
    patients: int
    with_nodule: int
    dicom_files: int
    series: int
    seed: int


@dataclass(frozen=True)
class _Geometry:
    """The CT grid shared by every series: square slices, contiguous axial slices."""

    rows: int
    slices: int
    spacing_mm: float
    thickness_mm: float

    @property
    def origin(self) -> tuple[float, float, float]:
        """Patient position of voxel (0, 0, 0): centred in-plane, table start at z=-200 mm."""
        half = -self.rows * self.spacing_mm / 2
        return (half, half, -200.0)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient coordinates (mm) of voxel centres along x (columns), y (rows), z (slices)."""
        x0, y0, z0 = self.origin
        grid = np.arange(self.rows) * self.spacing_mm
        return x0 + grid, y0 + grid, z0 + np.arange(self.slices) * self.thickness_mm


@dataclass(frozen=True)
class _Anatomy:
    """Where a patient's organs are, in patient mm; used for drawing and for placing nodules."""

    center: tuple[float, float, float]
    body_semi: tuple[float, float]
    fat_rim_mm: float
    lung_centers_x: tuple[float, float]
    lung_center_y: float
    lung_semi: tuple[float, float, float]
    spine_center_y: float
    spine_radius: float

    @classmethod
    def for_patient(cls, geom: _Geometry, scale: float) -> _Anatomy:
        # In-plane sizes follow the field of view (the scanner's FOV is set to the body); the
        # lungs are taller than any slab we scan, so their z extent is physical.
        x, y, z = geom.axes()
        cx, cy, cz = float(x.mean()), float(y.mean()), float(z.mean())
        w = geom.rows * geom.spacing_mm * scale
        return cls(center=(cx, cy, cz), body_semi=(0.42 * w, 0.30 * w), fat_rim_mm=0.035 * w,
                   lung_centers_x=(cx - 0.18 * w, cx + 0.18 * w), lung_center_y=cy - 0.02 * w,
                   lung_semi=(0.12 * w, 0.19 * w, 125.0), spine_center_y=cy + 0.21 * w,
                   spine_radius=0.045 * w)

    def lung_value(self, side: int, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The lung's ellipsoid equation: <= 1 inside the lung on ``side`` (0 right, 1 left)."""
        ax, ay, az = self.lung_semi
        return (((x - self.lung_centers_x[side]) / ax) ** 2 + ((y - self.lung_center_y) / ay) ** 2
                + ((z - self.center[2]) / az) ** 2)


@dataclass(frozen=True)
class _Nodule:
    """A solid sphere; its centre is in patient coordinates (mm)."""

    center_mm: tuple[float, float, float]
    radius_mm: float


@dataclass(frozen=True)
class _Patient:
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
    anatomy: _Anatomy
    nodule: _Nodule | None

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


def generate_cohort(out_dir: str | Path, *, patients: int, seed: int = 0, rows: int = 128,
                    slices: int = 20, pixel_spacing_mm: float = 3.0,
                    slice_thickness_mm: float = 5.0,
                    nodule_fraction: float = 0.5) -> CohortSummary:
    """Write a synthetic chest CT + EMR cohort of ``patients`` people under ``out_dir``.

    Slices are ``rows`` x ``rows`` pixels. Exactly ``round(patients * nodule_fraction)`` patients
    get a nodule. ``out_dir`` must be empty, missing, or hold a previous cohort (replaced).
    Raises :class:`~medray.errors.ConfigError` for invalid arguments.
    """
    geom = _Geometry(rows, slices, float(pixel_spacing_mm), float(slice_thickness_mm))
    _validate(patients, seed, geom, nodule_fraction)
    out = Path(out_dir)
    _prepare_out_dir(out)

    # Independent streams, so that e.g. changing the EMR draws never changes an image.
    people_seq, emr_seq, image_seq = np.random.SeedSequence(seed).spawn(3)
    cohort = _draw_patients(np.random.default_rng(people_seq), patients, geom, nodule_fraction)
    uid_context = json.dumps({"seed": seed, "rows": rows, "slices": slices,
                              "spacing": geom.spacing_mm, "thickness": geom.thickness_mm,
                              "patients": patients, "nodule_fraction": nodule_fraction})
    series_uids = []
    for patient, image_rng in zip(cohort, image_seq.spawn(patients)):
        volume = _render(patient, geom, np.random.default_rng(image_rng))
        series_uids.append(_write_series(out / patient.series_dir, patient, geom, volume,
                                         uid_context))

    emr = _emr_tables(np.random.default_rng(emr_seq), cohort)
    _write_emr(out / "emr", cohort, emr)
    _write_ground_truth(out / "ground_truth.parquet", cohort, series_uids)
    summary = CohortSummary(out_dir=out, patients=patients,
                            with_nodule=sum(p.nodule is not None for p in cohort),
                            dicom_files=patients * slices, series=patients, seed=seed)
    _write_manifest(out / "cohort.json", summary, geom, nodule_fraction, cohort, emr)
    return summary


# --- Arguments and output directory ----------------------------------------------------------

def _validate(patients: int, seed: int, geom: _Geometry, nodule_fraction: float) -> None:
    if not isinstance(patients, int) or not 1 <= patients <= 9999:
        raise ConfigError(f"patients must be an integer from 1 to 9999, got {patients!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(geom.rows, int) or not 32 <= geom.rows <= 1024:
        raise ConfigError(f"rows must be an integer from 32 to 1024, got {geom.rows!r}")
    if not isinstance(geom.slices, int) or not 1 <= geom.slices <= 999:
        raise ConfigError(f"slices must be an integer from 1 to 999, got {geom.slices!r}")
    if not (geom.spacing_mm > 0 and geom.thickness_mm > 0):
        raise ConfigError("pixel_spacing_mm and slice_thickness_mm must be positive")
    if not 0.0 <= nodule_fraction <= 1.0:
        raise ConfigError(f"nodule_fraction must be within [0, 1], got {nodule_fraction!r}")
    smallest = _Anatomy.for_patient(geom, _MIN_BODY_SCALE)
    too_small = _max_nodule_radius(geom, smallest) < _NODULE_RADIUS_MM[0]
    if too_small and round(patients * nodule_fraction):
        raise ConfigError("the volume is too small to hold a nodule of radius "
                          f"{_NODULE_RADIUS_MM[0]} mm; use more rows or slices")


def _prepare_out_dir(out: Path) -> None:
    """Refuse a directory holding anything but a previous cohort, which is replaced."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    existing = {p.name for p in out.iterdir()} if out.exists() else set()
    if existing and not ("cohort.json" in existing and existing <= _OUTPUTS):
        raise ConfigError(f"{out} is not empty and holds no previous cohort; pick another out_dir")
    for name in existing:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


# --- People -----------------------------------------------------------------------------------

def _draw_patients(rng: np.random.Generator, n: int, geom: _Geometry,
                   nodule_fraction: float) -> list[_Patient]:
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
                  low_pop: bool, nodule: bool, geom: _Geometry) -> _Patient:
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
    anatomy = _Anatomy.for_patient(geom, float(rng.uniform(_MIN_BODY_SCALE, 1.0)))
    return _Patient(
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
        referring=_PHYSICIANS[int(rng.integers(len(_PHYSICIANS)))],
        operator=_OPERATORS[int(rng.integers(len(_OPERATORS)))],
        anatomy=anatomy, nodule=_place_nodule(rng, geom, anatomy) if nodule else None)


# --- Nodules and images -----------------------------------------------------------------------

def _max_nodule_radius(geom: _Geometry, anatomy: _Anatomy) -> float:
    """Largest radius that fits inside a lung and between the first and last slice."""
    ax, ay, _ = anatomy.lung_semi
    z_span = (geom.slices - 1) * geom.thickness_mm
    return min(_NODULE_RADIUS_MM[1], 0.5 * min(ax, ay), z_span / 2)


# Directions (unit vectors) whose surface points must lie inside the lung.
_DIRECTIONS = np.array([d for d in product((-1, 0, 1), repeat=3) if any(d)], float)
_DIRECTIONS /= np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True)


def _place_nodule(rng: np.random.Generator, geom: _Geometry, anatomy: _Anatomy) -> _Nodule:
    """A sphere centred inside a lung, wholly inside it and inside the scanned slab."""
    radius = float(rng.uniform(_NODULE_RADIUS_MM[0], _max_nodule_radius(geom, anatomy)))
    side = int(rng.integers(2))
    ax, ay, _ = anatomy.lung_semi
    _, _, z = geom.axes()
    for _ in range(1000):  # rejection sampling; the radius cap makes acceptance likely
        c = np.array([anatomy.lung_centers_x[side] + rng.uniform(-ax, ax),
                      anatomy.lung_center_y + rng.uniform(-ay, ay),
                      rng.uniform(z[0] + radius, z[-1] - radius)])
        surface = c + radius * _DIRECTIONS
        if np.all(anatomy.lung_value(side, *surface.T) <= 1.0):
            return _Nodule(center_mm=(float(c[0]), float(c[1]), float(c[2])), radius_mm=radius)
    raise ConfigError("could not place a nodule inside a lung; use more rows or slices")


def _render(patient: _Patient, geom: _Geometry, rng: np.random.Generator) -> np.ndarray:
    """The CT volume as stored pixel values, shape (slices, rows, columns), little-endian uint16."""
    a = patient.anatomy
    x, y, z = geom.axes()
    xx, yy, zz = x[None, None, :], y[None, :, None], z[:, None, None]
    cx, cy, _ = a.center
    bx, by = a.body_semi
    body = ((xx - cx) / bx) ** 2 + ((yy - cy) / by) ** 2 <= 1
    inner = ((xx - cx) / (bx - a.fat_rim_mm)) ** 2 + ((yy - cy) / (by - a.fat_rim_mm)) ** 2 <= 1
    spine = (xx - cx) ** 2 + (yy - a.spine_center_y) ** 2 <= a.spine_radius ** 2
    lungs = (a.lung_value(0, xx, yy, zz) <= 1) | (a.lung_value(1, xx, yy, zz) <= 1)

    shape = (geom.slices, geom.rows, geom.rows)
    hu = np.full(shape, _HU_AIR, np.float32)
    hu[np.broadcast_to(body, shape)] = _HU_FAT
    hu[np.broadcast_to(inner, shape)] = _HU_SOFT
    hu[np.broadcast_to(spine, shape)] = _HU_BONE
    texture = _smooth_noise(rng, shape, sigma_px=1.5) * _LUNG_TEXTURE_SD
    hu[lungs] = _HU_LUNG + texture[lungs]
    if patient.nodule is not None:
        (nx, ny, nz), r = patient.nodule.center_mm, patient.nodule.radius_mm
        hu[(xx - nx) ** 2 + (yy - ny) ** 2 + (zz - nz) ** 2 <= r * r] = _HU_NODULE
    hu += rng.normal(0.0, _NOISE_SD, shape).astype(np.float32)
    stored = np.rint(hu - _RESCALE_INTERCEPT)
    return np.clip(stored, 0, 2**_BITS_STORED - 1).astype("<u2")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int],
                  sigma_px: float) -> np.ndarray:
    """Unit-variance noise blurred in-plane by a gaussian (in Fourier space: no scipy here)."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[1])[:, None]
    fx = np.fft.rfftfreq(shape[2])[None, :]
    kernel = np.exp(-2 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    smooth = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape[1:])
    return (smooth / smooth.std()).astype(np.float32)


# --- DICOM ------------------------------------------------------------------------------------

_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "medray.data.cohort")


def _uid(context: str, *parts: object) -> str:
    """A 2.25 UID from a name-based UUID of the cohort's parameters: equal inputs, equal UIDs.

    (pydicom's ``generate_uid(prefix=None)`` ignores ``entropy_srcs`` and is random.)
    """
    name = json.dumps([context, *map(str, parts)])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _write_series(series_dir: Path, p: _Patient, geom: _Geometry, volume: np.ndarray,
                  uid_context: str) -> tuple[str, str]:
    """Write one slice file per z; returns (StudyInstanceUID, SeriesInstanceUID)."""
    uids = {kind: _uid(uid_context, kind, p.index) for kind in ("study", "series", "frame")}
    series_dir.mkdir(parents=True)
    for k in range(geom.slices):
        ds = Dataset()
        _set_patient(ds, p)
        _set_study(ds, p, uids["study"])
        _set_series(ds, p, geom, uids["series"], uids["frame"])
        _set_image(ds, geom, k, volume[k], _uid(uid_context, "sop", p.index, k))
        ds.save_as(series_dir / f"slice_{k:03d}.dcm", enforce_file_format=True)
    return uids["study"], uids["series"]


def _set_patient(ds: Dataset, p: _Patient) -> None:
    ds.PatientName = p.dicom_name
    ds.PatientID = p.mrn
    ds.PatientBirthDate = p.birth_date.strftime("%Y%m%d")
    ds.PatientSex = p.sex
    ds.PatientAge = f"{p.age:03d}Y"
    ds.PatientAddress = f"{p.street}, {p.city}, {p.state} {p.zip}"
    ds.OtherPatientIDs = p.account_number
    # A private block repeats the identifiers where only a thorough de-identifier looks.
    block = ds.private_block(0x0011, "MEDRAY SYNTH", create=True)
    block.add_new(0x01, "LO", p.mrn)
    block.add_new(0x02, "LO", p.dicom_name)


def _set_study(ds: Dataset, p: _Patient, study_uid: str) -> None:
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = p.study_at.strftime("%Y%m%d")
    ds.StudyTime = p.study_at.strftime("%H%M%S")
    ds.AccessionNumber = p.accession
    ds.StudyID = f"CT{p.accession[-6:]}"
    ds.StudyDescription = "CT CHEST"
    ds.ReferringPhysicianName = f"{p.referring[0]}^{p.referring[1]}".upper()
    ds.InstitutionName, ds.InstitutionAddress = p.institution


def _set_series(ds: Dataset, p: _Patient, geom: _Geometry, series_uid: str,
                frame_uid: str) -> None:
    acquired = p.study_at + timedelta(minutes=2)
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"CHEST AXIAL {geom.thickness_mm:g}MM"
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = acquired.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = acquired.strftime("%H%M%S")
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.Manufacturer = "medray-synth"
    ds.ManufacturerModelName = "Phantom 1"
    ds.OperatorsName = f"{p.operator[0]}^{p.operator[1]}".upper()
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.SliceThickness = _ds(geom.thickness_mm)
    ds.SpacingBetweenSlices = _ds(geom.thickness_mm)
    ds.PixelSpacing = [_ds(geom.spacing_mm), _ds(geom.spacing_mm)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]


def _set_image(ds: Dataset, geom: _Geometry, k: int, pixels: np.ndarray, sop_uid: str) -> None:
    x0, y0, z0 = geom.origin
    z = z0 + k * geom.thickness_mm
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
    ds.SliceLocation = _ds(z)
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = geom.rows
    ds.BitsAllocated = 16
    ds.BitsStored = _BITS_STORED
    ds.HighBit = _BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = _ds(_RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.PixelData = pixels.tobytes()


def _ds(value: float) -> str:
    """A float as a valid (<= 16 character) DICOM decimal string."""
    return format_number_as_ds(float(value))


# --- EMR and ground truth ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Emr:
    encounters: pa.Table
    labs: pa.Table
    diagnoses: pa.Table


def _emr_tables(rng: np.random.Generator, cohort: list[_Patient]) -> _Emr:
    """Encounters (the CT visit plus 0-2 earlier ones), their labs, and diagnoses."""
    enc: list[dict] = []
    labs: list[dict] = []
    dx: list[dict] = []
    visits_per_patient = rng.integers(1, 4, size=len(cohort))
    ids = rng.choice(90_000_000, size=int(visits_per_patient.sum()), replace=False) + 10_000_000
    next_id = iter(f"ENC{i}" for i in ids)
    for p, n_visits in zip(cohort, visits_per_patient):
        visits = [_ct_encounter(rng, p, next(next_id))]
        visits += [_clinic_encounter(rng, p, next(next_id)) for _ in range(n_visits - 1)]
        visits.sort(key=lambda e: e["admit_date"])
        enc += visits
        for e in visits:
            labs += _draw_labs(rng, p, e)
        dx += _draw_diagnoses(rng, p, visits)
    return _Emr(encounters=pa.Table.from_pylist(enc, schema=_ENCOUNTER_SCHEMA),
                labs=pa.Table.from_pylist(labs, schema=_LAB_SCHEMA),
                diagnoses=pa.Table.from_pylist(dx, schema=_DX_SCHEMA))


def _note(p: _Patient, text: str) -> str:
    """Free text that names the patient, as real notes do (a de-identification canary)."""
    who = "woman" if p.sex == "F" else "man"
    return f"{p.first} {p.last} ({p.mrn}), {p.age}-year-old {who}. {text}"


def _ct_encounter(rng: np.random.Generator, p: _Patient, encounter_id: str) -> dict:
    physician = _PHYSICIANS[int(rng.integers(len(_PHYSICIANS)))]
    indication = rng.choice(_CT_INDICATIONS)
    return {"encounter_id": encounter_id, "mrn": p.mrn, "admit_date": p.study_at.date(),
            "discharge_date": p.study_at.date(), "department": "Radiology",
            "attending_physician": f"Dr. {physician[1]} {physician[0]}",
            "note": _note(p, f"Outpatient CT chest for {indication}, accession {p.accession}.")}


def _clinic_encounter(rng: np.random.Generator, p: _Patient, encounter_id: str) -> dict:
    physician = _PHYSICIANS[int(rng.integers(len(_PHYSICIANS)))]
    admit = p.study_at.date() - timedelta(days=int(rng.integers(30, 730)))
    department = str(rng.choice(_DEPARTMENTS))
    reason = rng.choice(_VISIT_REASONS)
    return {"encounter_id": encounter_id, "mrn": p.mrn, "admit_date": admit,
            "discharge_date": admit + timedelta(days=int(rng.integers(0, 6))),
            "department": department, "attending_physician": f"Dr. {physician[1]} {physician[0]}",
            "note": _note(p, f"Seen in {department} for {reason}. Lives in {p.city}, {p.state}.")}


def _draw_labs(rng: np.random.Generator, p: _Patient, encounter: dict) -> list[dict]:
    chosen = rng.choice(len(_LABS), size=int(rng.integers(2, 5)), replace=False)
    day = datetime.combine(encounter["admit_date"], datetime.min.time())
    rows = []
    for i in sorted(chosen):
        loinc, name, unit, mean, sd = _LABS[i]
        rows.append({"mrn": p.mrn, "encounter_id": encounter["encounter_id"], "loinc_code": loinc,
                     "test_name": name, "unit": unit,
                     "value": round(max(0.1, float(rng.normal(mean, sd))), 2),
                     "collected_at": day + timedelta(minutes=int(rng.integers(6 * 60, 20 * 60)))})
    return rows


def _draw_diagnoses(rng: np.random.Generator, p: _Patient, visits: list[dict]) -> list[dict]:
    """1-3 chronic codes on random visits; R91.1 on the CT visit iff the patient has a nodule."""
    chosen = rng.choice(len(_OTHER_DX), size=int(rng.integers(1, 4)), replace=False)
    coded = [(_OTHER_DX[i], visits[int(rng.integers(len(visits)))]) for i in sorted(chosen)]
    if p.nodule is not None:
        ct_visit = next(v for v in visits if v["department"] == "Radiology")
        coded.append((_NODULE_DX, ct_visit))
    return [{"mrn": p.mrn, "encounter_id": v["encounter_id"], "icd10_code": code,
             "description": text, "diagnosed_at": v["admit_date"]} for (code, text), v in coded]


_PATIENT_SCHEMA = pa.schema([
    ("mrn", pa.string()), ("first_name", pa.string()), ("last_name", pa.string()),
    ("birth_date", pa.date32()), ("sex", pa.string()), ("street_address", pa.string()),
    ("city", pa.string()), ("state", pa.string()), ("zip", pa.string()), ("phone", pa.string()),
    ("email", pa.string()), ("ssn", pa.string()), ("insurance_plan_id", pa.string()),
    ("account_number", pa.string())])
_ENCOUNTER_SCHEMA = pa.schema([
    ("encounter_id", pa.string()), ("mrn", pa.string()), ("admit_date", pa.date32()),
    ("discharge_date", pa.date32()), ("department", pa.string()),
    ("attending_physician", pa.string()), ("note", pa.string())])
_LAB_SCHEMA = pa.schema([
    ("mrn", pa.string()), ("encounter_id", pa.string()), ("loinc_code", pa.string()),
    ("test_name", pa.string()), ("value", pa.float64()), ("unit", pa.string()),
    ("collected_at", pa.timestamp("s"))])
_DX_SCHEMA = pa.schema([
    ("mrn", pa.string()), ("encounter_id", pa.string()), ("icd10_code", pa.string()),
    ("description", pa.string()), ("diagnosed_at", pa.date32())])
_GROUND_TRUTH_SCHEMA = pa.schema([
    ("mrn", pa.string()), ("study_instance_uid", pa.string()),
    ("series_instance_uid", pa.string()), ("series_dir", pa.string()), ("has_nodule", pa.bool_()),
    ("nodule_center_x_mm", pa.float64()), ("nodule_center_y_mm", pa.float64()),
    ("nodule_center_z_mm", pa.float64()), ("nodule_radius_mm", pa.float64())])


def _write_emr(emr_dir: Path, cohort: list[_Patient], emr: _Emr) -> None:
    emr_dir.mkdir()
    people = [{"mrn": p.mrn, "first_name": p.first, "last_name": p.last,
               "birth_date": p.birth_date, "sex": p.sex, "street_address": p.street,
               "city": p.city, "state": p.state, "zip": p.zip, "phone": p.phone,
               "email": p.email, "ssn": p.ssn, "insurance_plan_id": p.insurance_plan_id,
               "account_number": p.account_number} for p in cohort]
    pq.write_table(pa.Table.from_pylist(people, schema=_PATIENT_SCHEMA),
                   emr_dir / "patients.parquet")
    pq.write_table(emr.encounters, emr_dir / "encounters.parquet")
    pa_csv.write_csv(emr.labs, emr_dir / "labs.csv")
    pa_csv.write_csv(emr.diagnoses, emr_dir / "diagnoses.csv")


def _write_ground_truth(path: Path, cohort: list[_Patient],
                        series_uids: list[tuple[str, str]]) -> None:
    rows = []
    for p, (study_uid, series_uid) in zip(cohort, series_uids):
        n = p.nodule
        x, y, z = n.center_mm if n else (float("nan"),) * 3
        rows.append({"mrn": p.mrn, "study_instance_uid": study_uid,
                     "series_instance_uid": series_uid, "series_dir": p.series_dir,
                     "has_nodule": n is not None, "nodule_center_x_mm": x,
                     "nodule_center_y_mm": y, "nodule_center_z_mm": z,
                     "nodule_radius_mm": n.radius_mm if n else float("nan")})
    pq.write_table(pa.Table.from_pylist(rows, schema=_GROUND_TRUTH_SCHEMA), path)


def _write_manifest(path: Path, summary: CohortSummary, geom: _Geometry, nodule_fraction: float,
                    cohort: list[_Patient], emr: _Emr) -> None:
    # No out_dir here: the file must not change when the same cohort is written elsewhere.
    manifest = {
        "generator": "medray.data.cohort", "format_version": FORMAT_VERSION, "seed": summary.seed,
        "parameters": {"patients": summary.patients, "rows": geom.rows, "columns": geom.rows,
                       "slices": geom.slices, "pixel_spacing_mm": geom.spacing_mm,
                       "slice_thickness_mm": geom.thickness_mm,
                       "nodule_fraction": nodule_fraction},
        "counts": {"patients": summary.patients, "with_nodule": summary.with_nodule,
                   "older_than_89": sum(p.age > 89 for p in cohort), "series": summary.series,
                   "dicom_files": summary.dicom_files, "encounters": emr.encounters.num_rows,
                   "labs": emr.labs.num_rows, "diagnoses": emr.diagnoses.num_rows},
    }
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
