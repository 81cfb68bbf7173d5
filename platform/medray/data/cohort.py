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
The parts: :mod:`~medray.data.anatomy` (the phantom and its HU volume), :mod:`~medray.data.people`
(the fake patients), :mod:`~medray.data.dicom_writer` (the series) and
:mod:`~medray.data.emr_tables` (the EMR) with :mod:`~medray.data.emr_codes` (diagnosis-code
histories that predict an outcome, I50.9).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medray.data.anatomy import MIN_BODY_SCALE, NODULE_RADIUS_MM, Anatomy, Geometry, max_nodule_radius, render
from medray.data.dicom_writer import write_series
from medray.data.emr_codes import add_code_histories
from medray.data.emr_tables import EmrTables, draw_emr, write_emr
from medray.data.people import Patient, draw_patients
from medray.errors import ConfigError

__all__ = ["CohortSummary", "generate_cohort"]

FORMAT_VERSION = 1

_OUTPUTS = frozenset({"dicom", "emr", "ground_truth.parquet", "cohort.json"})
_GROUND_TRUTH_SCHEMA = pa.schema([
    ("mrn", pa.string()), ("study_instance_uid", pa.string()),
    ("series_instance_uid", pa.string()), ("series_dir", pa.string()), ("has_nodule", pa.bool_()),
    ("nodule_center_x_mm", pa.float64()), ("nodule_center_y_mm", pa.float64()),
    ("nodule_center_z_mm", pa.float64()), ("nodule_radius_mm", pa.float64())])


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`generate_cohort` wrote."""

    out_dir: Path
    patients: int
    with_nodule: int
    dicom_files: int
    series: int
    seed: int


def _write_patient(out: Path, patient: Patient, geom: Geometry, image_seq: np.random.SeedSequence,
                   uid_context: str) -> tuple[str, str]:
    """Render and write one patient's series; its own random stream, so the order of patients is free."""
    volume = render(patient.anatomy, patient.nodule, geom, np.random.default_rng(image_seq))
    return write_series(out / patient.series_dir, patient, geom, volume, uid_context)


def generate_cohort(out_dir: str | Path, *, patients: int, seed: int = 0, rows: int = 128,
                    slices: int = 20, pixel_spacing_mm: float = 3.0,
                    slice_thickness_mm: float = 5.0,
                    nodule_fraction: float = 0.5, workers: int = 1) -> CohortSummary:
    """Write a synthetic chest CT + EMR cohort of ``patients`` people under ``out_dir``.

    Slices are ``rows`` x ``rows`` pixels. Exactly ``round(patients * nodule_fraction)`` patients
    get a nodule. ``out_dir`` must be empty, missing, or hold a previous cohort (replaced).
    ``workers`` > 1 writes the series in that many processes (the files are the same).
    Raises :class:`~medray.errors.ConfigError` for invalid arguments.
    """
    geom = Geometry(rows, slices, float(pixel_spacing_mm), float(slice_thickness_mm))
    _validate(patients, seed, geom, nodule_fraction)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    out = Path(out_dir)
    _prepare_out_dir(out)

    # Independent streams, so that e.g. changing the EMR draws never changes an image.
    people_seq, emr_seq, image_seq, codes_seq = np.random.SeedSequence(seed).spawn(4)
    cohort = draw_patients(np.random.default_rng(people_seq), patients, geom, nodule_fraction)
    uid_context = json.dumps({"seed": seed, "rows": rows, "slices": slices,
                              "spacing": geom.spacing_mm, "thickness": geom.thickness_mm,
                              "patients": patients, "nodule_fraction": nodule_fraction})
    jobs = [(out, patient, geom, image_rng, uid_context)
            for patient, image_rng in zip(cohort, image_seq.spawn(patients))]
    if workers == 1 or patients == 1:
        series_uids = [_write_patient(*job) for job in jobs]
    else:
        # Spawned, not forked: the caller may hold threads (a Ray driver does) that a fork would copy half-way.
        with ProcessPoolExecutor(min(workers, patients), mp_context=multiprocessing.get_context("spawn")) as pool:
            series_uids = list(pool.map(_write_patient, *zip(*jobs), chunksize=max(1, patients // (4 * workers))))

    emr = draw_emr(np.random.default_rng(emr_seq), cohort)
    emr = add_code_histories(emr, np.random.default_rng(codes_seq), cohort)  # the outcome's signal
    write_emr(out / "emr", cohort, emr)
    _write_ground_truth(out / "ground_truth.parquet", cohort, series_uids)
    summary = CohortSummary(out_dir=out, patients=patients,
                            with_nodule=sum(p.nodule is not None for p in cohort),
                            dicom_files=patients * slices, series=patients, seed=seed)
    _write_manifest(out / "cohort.json", summary, geom, nodule_fraction, cohort, emr)
    return summary


# --- Arguments and output directory ----------------------------------------------------------

def _validate(patients: int, seed: int, geom: Geometry, nodule_fraction: float) -> None:
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
    smallest = Anatomy.for_patient(geom, MIN_BODY_SCALE)
    too_small = max_nodule_radius(geom, smallest) < NODULE_RADIUS_MM[0]
    if too_small and round(patients * nodule_fraction):
        raise ConfigError("the volume is too small to hold a nodule of radius "
                          f"{NODULE_RADIUS_MM[0]} mm; use more rows or slices")


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


# --- Ground truth and manifest ---------------------------------------------------------------

def _write_ground_truth(path: Path, cohort: list[Patient],
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


def _write_manifest(path: Path, summary: CohortSummary, geom: Geometry, nodule_fraction: float,
                    cohort: list[Patient], emr: EmrTables) -> None:
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
