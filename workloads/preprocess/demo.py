"""The demo's preprocessing stage: the synthetic cohort through both pipelines.

Writes, under the demo output folder:

* ``deid.key``    a fresh de-identification key (mode 0600), reused by later runs and stages,
* ``prep/``       the DICOM pipeline's output: ``volumes/``, ``quarantine.parquet``, ``manifest.json``
  (read it with :func:`medray.data.shards.read_volumes`),
* ``prep/emr/``   the de-identified EMR tables, joinable with the volumes on ``patient_pseudonym``,
* ``figures/preprocess-*.png``  windowed slices of the shards, the run's counts and the HU histogram.

Dates are kept shifted and patient characteristics retained, so the research stage can relate
images to encounters and use age and sex.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medray.data.shards import (
    PATIENT_AGE,
    PATIENT_PSEUDONYM,
    PATIENT_SEX,
    VOLUME,
    check_schema,
    shard_files,
    window_name,
)
from medray.demo import figures
from medray.demo.report import FIGURES_DIR, figure_entry
from medray.demo.runner import DemoContext
from medray.imaging.normalize import WINDOWS
from medray.privacy.emr import PROFILE_RULES, EmrMapping
from medray.privacy.ps315 import DeidOptions
from medray.privacy.pseudonym import ensure_key_file, load_key
from workloads.preprocess.dicom import DicomOptions, Summary, preprocess_dicom
from workloads.preprocess.emr import preprocess_emr
from workloads.preprocess.runs import PREP_PROFILE, placement

__all__ = ["MONTAGE_SERIES", "SAMPLE_SERIES", "stage"]

MONTAGE_SERIES = 8  # series shown in the slice montage
SAMPLE_SERIES = 64  # series read for the figures, at most


def _counts_figure(ctx: DemoContext, dicom: Summary) -> dict[str, str]:
    counts = {"input files": dicom.files, "series written": dicom.series_written,
              "series skipped (resume)": dicom.series_skipped, "series quarantined": dicom.series_quarantined,
              "slices written": dicom.slices,
              **{f"quarantined: {reason}": n for reason, n in sorted(dicom.quarantined.items())}}
    path = figures.bars(list(counts), {"count": list(counts.values())},
                        ctx.out / FIGURES_DIR / "preprocess-counts.png", xlabel="count",
                        size_px=(640, 60 + 22 * len(counts)))
    return figure_entry(ctx.out, path, "DICOM preprocessing: files, series and slices by outcome; "
                                       "quarantined files by reason")


def _shard_figures(ctx: DemoContext, files: list[Path]) -> list[dict[str, str]]:
    if not files:  # every series was quarantined
        return []
    spec = check_schema(pq.read_schema(files[0]))
    # A sample is enough for a picture; reading every volume of a big run would not fit in memory.
    columns = [PATIENT_PSEUDONYM, PATIENT_SEX, PATIENT_AGE, VOLUME]
    tables = []
    for f in files:
        tables.append(pq.read_table(f, columns=columns))
        if sum(len(t) for t in tables) >= SAMPLE_SERIES:
            break
    table = pa.concat_tables(tables).slice(0, SAMPLE_SERIES).sort_by(PATIENT_PSEUDONYM)
    volumes = table[VOLUME].combine_chunks().to_numpy_ndarray()
    shown = table.slice(0, MONTAGE_SERIES).to_pylist()
    titles = [f"{r[PATIENT_PSEUDONYM][:10]}…\n{r[PATIENT_SEX] or '-'} {r[PATIENT_AGE] or '-'}" for r in shown]
    window = window_name(spec.window)
    slices = figures.slice_montage(list(volumes[:len(shown)]), titles,
                                   ctx.out / FIGURES_DIR / "preprocess-slices.png", panel_px=140)
    entries = [figure_entry(ctx.out, slices, f"Middle axial slice of {len(shown)} de-identified series from the "
                                             f"shards ({window} window; patient pseudonym, sex and age as retained)")]
    if spec.window is not None:
        # The shards hold windowed values in [0, 1]; inside the window they map back to HU exactly.
        center, width = WINDOWS[spec.window] if isinstance(spec.window, str) else spec.window
        low = center - width / 2
        inside = volumes[(volumes > 0) & (volumes < 1)]
        hu = figures.histogram(low + inside * width, ctx.out / FIGURES_DIR / "preprocess-hu.png",
                               xlabel="Hounsfield units", log=True, value_range=(low, low + width))
        entries.append(figure_entry(ctx.out, hu, f"HU histogram of {len(table)} de-identified volumes inside the "
                                                 f"{window} window (voxels clipped at its edges left out)"))
    return entries


def stage(ctx: DemoContext) -> dict[str, Any]:
    """Preprocess ``ctx.cohort`` (DICOM and EMR) into ``ctx.out / "prep"``; summary for the demo."""
    key = load_key(ensure_key_file(ctx.out / "deid.key"))
    out = ctx.out / "prep"
    options = DicomOptions(deid=DeidOptions(retain_dates=True, retain_patient_characteristics=True))
    dicom = preprocess_dicom(ctx.cohort / "dicom", out, key=key, options=options)
    ctx.say(dicom.table())
    # Longitudinal, not Safe Harbor: training joins the records to the images by patient pseudonym.
    mapping = EmrMapping.default("longitudinal")
    emr = preprocess_emr(ctx.cohort / "emr", out / "emr", key=key, mapping=mapping)
    ctx.say(emr.table())
    ctx.say(f"EMR profile {mapping.profile}: {PROFILE_RULES[mapping.profile]}")
    return {
        "series": dicom.series_written + dicom.series_skipped,
        "slices": dicom.slices,
        "quarantined": dicom.quarantined_files,
        "emr_rows": emr.rows_out,
        "emr_profile": mapping.profile,
        # Where the work ran against where the policy puts it first (it spills only when that is full).
        "placement": {"policy_first_choice": placement(PREP_PROFILE).node_type.name,
                      "series_by_node_type": dict(sorted(dicom.node_types.items()))},
        "seconds": round(dicom.seconds + emr.seconds, 1),
        "volumes": str(out / "volumes"),
        "emr": str(out / "emr"),
        "figures": [_counts_figure(ctx, dicom), *_shard_figures(ctx, shard_files(out))],
    }
