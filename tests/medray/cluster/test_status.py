"""`medray status`: one row per node with its labels and GPU health."""

import json
import os
import subprocess
import sys

from medray.cli.status import format_nodes
from medray.cluster.status import node_rows

REQUIRED = {"node_id", "role", "site", "storage", "accelerator", "alive", "resources", "drained"}


def test_one_row_per_node_type_with_its_labels(ray_cluster, node_types):
    # Alive ones: a node that left (another test drains and removes one) stays as a dead row.
    rows = [r for r in node_rows() if r["alive"]]
    assert sorted(r["node_type"] for r in rows) == sorted(t.name for t in node_types)
    by_type = {r["node_type"]: r for r in rows}
    for t in node_types:
        row = by_type[t.name]
        assert REQUIRED <= set(row)
        assert (row["role"], row["site"], row["storage"], row["accelerator"]) == (
            t.role, t.site, t.storage, t.accelerator)
        assert row["alive"] is True
        assert row["resources"].get("GPU", 0) == min(t.gpus, 1)
        assert row["gpu_health"] == ("simulated GPU (no device)" if t.gpus else "no GPU")
    table = format_nodes(rows)
    assert len(table.splitlines()) == len(rows) + 1 and "partner-a" in table


def test_cli_status_json(ray_cluster, node_types):
    out = subprocess.run(
        [sys.executable, "-m", "medray", "status", "--json", "--address", ray_cluster.address],
        check=True, capture_output=True, text=True, timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")},
    ).stdout
    rows = [r for r in json.loads(out) if r["alive"]]
    assert isinstance(rows, list) and len(rows) == len(node_types)
    assert all(REQUIRED <= set(r) for r in rows)
    assert {r["role"] for r in rows} == {t.role for t in node_types}
