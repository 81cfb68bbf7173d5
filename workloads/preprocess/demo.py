"""The demo's preprocessing stage: the synthetic cohort through both pipelines.

Writes, under the demo output folder:

* ``deid.key``    a fresh de-identification key (mode 0600), reused by later runs and stages,
* ``prep/``       the DICOM pipeline's output: ``volumes/``, ``quarantine.parquet``, ``manifest.json``
  (read it with :func:`medray.shards.read_volumes`),
* ``prep/emr/``   the de-identified EMR tables, joinable with the volumes on ``patient_pseudonym``.

Dates are kept shifted and patient characteristics retained, so the research stage can relate
images to encounters and use age and sex.
"""

from __future__ import annotations

from typing import Any

from medray.deid import DeidOptions
from medray.demo import DemoContext
from medray.pseudonym import ensure_key_file, load_key
from workloads.preprocess.dicom import DicomOptions, preprocess_dicom
from workloads.preprocess.emr import preprocess_emr

__all__ = ["stage"]


def stage(ctx: DemoContext) -> dict[str, Any]:
    """Preprocess ``ctx.cohort`` (DICOM and EMR) into ``ctx.out / "prep"``; summary for the demo."""
    key = load_key(ensure_key_file(ctx.out / "deid.key"))
    out = ctx.out / "prep"
    options = DicomOptions(deid=DeidOptions(retain_dates=True, retain_patient_characteristics=True))
    dicom = preprocess_dicom(ctx.cohort / "dicom", out, key=key, options=options)
    ctx.say(dicom.table())
    emr = preprocess_emr(ctx.cohort / "emr", out / "emr", key=key)
    ctx.say(emr.table())
    return {
        "series": dicom.series_written + dicom.series_skipped,
        "slices": dicom.slices,
        "quarantined": dicom.quarantined_files,
        "emr_rows": emr.rows_out,
        "seconds": round(dicom.seconds + emr.seconds, 1),
        "volumes": str(out / "volumes"),
        "emr": str(out / "emr"),
    }
