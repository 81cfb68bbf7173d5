"""The pipelines' shared driver helpers (no cluster needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medray.errors import ConfigError
from workloads.preprocess.runs import list_files


def test_list_files_finds_every_regular_file_recursively_and_sorted(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for rel in ("b.dcm", "a/IM0001", "a/deeper/x.DCM", "a/deeper/even/more/y", "c d/ü.dcm", ".hidden"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "empty").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "not-input.dcm").write_bytes(b"x")
    os.symlink(outside, root / "a" / "linked-folder")  # not followed
    os.symlink(root / "b.dcm", root / "a" / "link.dcm")  # a file all the same
    os.symlink(root / "gone", root / "dangling")  # no file behind it
    os.mkfifo(root / "a" / "pipe")  # not a regular file

    assert list_files(root) == [".hidden", "a/IM0001", "a/deeper/even/more/y", "a/deeper/x.DCM",
                                "a/link.dcm", "b.dcm", "c d/ü.dcm"]
    assert list_files(str(root / "a" / "deeper")) == ["even/more/y", "x.DCM"]


def test_list_files_refuses_what_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    for missing in (tmp_path / "file", tmp_path / "nothing"):
        with pytest.raises(ConfigError, match="not a directory"):
            list_files(missing)


def _node_types_of_tasks(concurrency: int, tasks: int) -> list[str]:
    import time

    import ray.data

    from workloads.preprocess.runs import PREP_PROFILE, map_options, placement

    def where(batch):
        time.sleep(1.0)  # long enough for the tasks of one wave to overlap
        labels = ray.get_runtime_context().get_node_labels()
        return {"node_type": [labels["medray.io/node-type"]] * len(batch["id"])}

    opts = map_options(placement(PREP_PROFILE), concurrency)
    ds = ray.data.range(tasks, override_num_blocks=tasks).map_batches(where, batch_size=1, **opts)
    return sorted(row["node_type"] for row in ds.take_all())


def _prep_cpus_free(timeout_s: float = 60.0) -> None:
    """Wait until no earlier work (a lingering worker lease, another test's actor) holds a prep CPU."""
    import time

    import ray

    from medray.cluster import ray_internals

    prep = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get("medray.io/role") == "prep"}
    totals = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] in prep}
    deadline = time.monotonic() + timeout_s
    while any(ray_internals.available_resources_per_node().get(n, {}).get("CPU", 0) < totals[n] for n in prep):
        assert time.monotonic() < deadline, "prep CPUs still held by earlier work"
        time.sleep(0.2)


def test_pipeline_tasks_fill_the_preferred_prep_type_and_spill_only_when_it_is_full(ray_cluster) -> None:
    _prep_cpus_free()
    # cpu-prep (NVMe, as the profile asks) has 2 CPUs in the local cluster, bulk-prep 2 more. One
    # wave: a second wave can race Ray's return of the first wave's worker leases and spill a task.
    assert _node_types_of_tasks(2, 2) == ["cpu-prep"] * 2
    _prep_cpus_free()
    spilled = _node_types_of_tasks(4, 8)
    assert "bulk-prep" in spilled and spilled.count("cpu-prep") >= spilled.count("bulk-prep")
