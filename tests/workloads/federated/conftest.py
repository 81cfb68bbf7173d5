"""Fixtures of the federated tests: two partner sites' storage (real shards, labels, operator policies).

The shards come from the research tests' :func:`write_training_data` (the synthetic cohort through
the shard schema); each site gets its own cohort and its own folder, as a hospital's storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.workloads.research.conftest import write_training_data
from workloads.federated.privacy import SitePolicy, write_policy

SITE_PATIENTS = 24
# Little noise so that two quick rounds still move the model; ε is accordingly large (docs/federated.md).
TEST_POLICY = dict(clip_norm=5.0, noise_multiplier=0.05, delta=1e-5, epsilon_budget=1e6)


@dataclass(frozen=True)
class Sites:
    roots: dict[str, Path]  # site -> storage root (ROOT/volumes, ROOT/emr/diagnoses.parquet, policy)


@pytest.fixture(scope="session")
def partner_sites(tmp_path_factory: pytest.TempPathFactory) -> Sites:
    roots = {}
    for seed, site in enumerate(("partner-a", "partner-b"), start=21):
        data = write_training_data(tmp_path_factory.mktemp(site), patients=SITE_PATIENTS, seed=seed, shards=2)
        write_policy(data.data, SitePolicy(site=site, **TEST_POLICY))
        roots[site] = data.data
    return Sites(roots=roots)
