"""The demo's split of one preprocessed cohort into three sites' storage."""

from __future__ import annotations

import pyarrow.dataset as pads

from medray.data.labels import read_positive_patients
from medray.data.shards import PATIENT_PSEUDONYM, check_schema, shard_files
from workloads.federated.demo import DEMO_SITES, split_by_site
from workloads.federated.local import LABELS_FILE


def _patients(root) -> list[str]:
    files = shard_files(root)
    assert all(check_schema(pads.dataset(str(f), format="parquet").schema) for f in files)
    return pads.dataset([str(f) for f in files], format="parquet").to_table(
        columns=[PATIENT_PSEUDONYM])[PATIENT_PSEUDONYM].to_pylist()


def test_every_patient_lands_on_exactly_one_site_with_its_label(partner_sites, tmp_path):
    source = partner_sites.roots["partner-a"]
    roots = split_by_site(source, source / LABELS_FILE, tmp_path)
    assert set(roots) == set(DEMO_SITES)
    everyone = _patients(source)
    positives = read_positive_patients(source / LABELS_FILE)
    seen: list[str] = []
    for site, root in roots.items():
        mine = _patients(root)
        assert mine, f"site {site} got no patients"
        assert read_positive_patients(root / LABELS_FILE) == positives & set(mine)
        seen += mine
    assert sorted(seen) == sorted(everyone)  # a partition: no patient on two sites, none lost
    again = split_by_site(source, source / LABELS_FILE, tmp_path / "again")
    assert all(sorted(_patients(again[s])) == sorted(_patients(r)) for s, r in roots.items())  # keyed, stable
