"""The demo's federated stage: a 3-site round of NoduleNet on the demo cohort split by site.

The demo has one preprocessed cohort; :func:`split_by_site` stands in for three hospitals that each
preprocessed their own patients: it deals the patients to the sites (non-identically: each site its
own share of patients with a nodule) and writes each site's shards and labels under its own storage
root, with the policy its operator would write (:data:`DEMO_POLICY`). Then every site trains a
round at a time on its own data, SecAgg+ aggregates, and the model is registered as
``nodule-federated`` with its (ε, δ).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from medray.data.labels import ICD10_COLUMN, NODULE_CODE, read_positive_patients
from medray.data.shards import PATIENT_PSEUDONYM, VOLUMES_DIR, shard_files, write_parquet, write_shard
from medray.demo.runner import DemoContext
from medray.errors import ConfigError
from workloads.federated.config import FederatedConfig, SiteSpec
from workloads.federated.local import LABELS_FILE, LocalTraining
from workloads.federated.privacy import SitePolicy, write_policy
from workloads.federated.run import federate

__all__ = ["DEMO_SITES", "DEMO_POLICY", "DEMO_ROUNDS", "split_by_site", "stage"]

# Site -> share of the nodule patients it gets (the rest of the patients are dealt evenly): sites
# differ in nodule rate, as hospitals with different referral patterns do.
DEMO_SITES = {"main": 0.5, "partner-a": 0.3, "partner-b": 0.2}
DEMO_ROUNDS = 3
DEMO_POLICY = dict(clip_norm=5.0, noise_multiplier=0.01, delta=1e-5, epsilon_budget=1e5)


def _site_of(patient: str, positive: bool, shares: Mapping[str, float]) -> str:
    """A patient's site: a keyed hash against the sites' cumulative shares (positives) or evenly."""
    u = int.from_bytes(hashlib.sha256(f"site:{patient}".encode()).digest()[:8], "big") / 2**64
    sites = list(shares)
    if not positive:
        return sites[int(u * len(sites))]
    edge = 0.0
    for site in sites:
        edge += shares[site] / sum(shares.values())
        if u < edge:
            return site
    return sites[-1]


def split_by_site(data: str | Path, labels: str | Path, out: str | Path,
                  shares: Mapping[str, float] = DEMO_SITES) -> dict[str, Path]:
    """Write each site's part of a preprocessed cohort under ``out/SITE`` (shards, labels); site -> root."""
    files = shard_files(data)
    if not files:
        raise ConfigError(f"no volume shards under {data}: run the preprocessing stage first")
    table = pads.dataset([str(f) for f in files], format="parquet").to_table()
    table = table.replace_schema_metadata(pq.read_schema(files[0]).metadata)
    positives = read_positive_patients(labels, NODULE_CODE)
    patients = table[PATIENT_PSEUDONYM].to_pylist()
    site_column = pa.array([_site_of(p, p in positives, shares) for p in patients])
    roots = {}
    for site in shares:
        part = table.filter(pc.equal(site_column, site))
        root = Path(out) / site
        write_shard(part, root / VOLUMES_DIR / "part-000.parquet")
        members = sorted(set(part[PATIENT_PSEUDONYM].to_pylist()))
        write_parquet(pa.table({PATIENT_PSEUDONYM: members,
                                ICD10_COLUMN: [NODULE_CODE if p in positives else "Z00.00" for p in members]}),
                      root / LABELS_FILE)
        roots[site] = root
    return roots



def stage(ctx: DemoContext, *, data: str | Path | None = None, labels: str | Path | None = None,
          rounds: int = DEMO_ROUNDS) -> dict[str, Any]:
    """Split the demo cohort by site, run ``rounds`` federated rounds on 3 sites, register the model."""
    if data is None or labels is None:
        found_data, found_labels = ctx.preprocessed("federated", takes_paths=True)
        data, labels = data or found_data, labels or found_labels
    roots = split_by_site(data, labels, ctx.out / "sites")
    for site, root in roots.items():
        write_policy(root, SitePolicy(site=site, **DEMO_POLICY))
    config = FederatedConfig(sites=tuple(SiteSpec(s, r) for s, r in roots.items()), rounds=rounds,
                             local=LocalTraining(epochs=2, seed=ctx.seed), cpus_per_site=0.5,
                             registry=str(ctx.registry))
    result = federate(config)
    ctx.say(result.table())
    ctx.say(f"registered {result.ref}; secure aggregation stages: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(result.stage_seconds.items())))
    last = result.rounds[-1].get("val", {})
    return {
        "model": result.ref,
        "rounds": len(result.rounds),
        "sites": {d["site"]: {**d["counts"], "ran_on_site": d["site_label"]} for d in result.sites},
        "val_auc": {s: round(v["auc"], 3) for s, v in last.items()},
        "epsilon": {s: float(f"{e:.4g}") for s, e in result.epsilon.items()},
        "delta": DEMO_POLICY["delta"],
        "stop_reason": result.stop_reason,
        "stage_seconds": {k: round(v, 2) for k, v in result.stage_seconds.items()},
        "seconds": round(result.seconds, 1),
    }
