"""Shared fixtures: one embedded multi-role Ray cluster for the whole test run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="session")
def node_types():
    from medray.cluster.node_types import load_node_types

    return load_node_types(CLUSTER_YAML)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """The local cluster of cluster.yaml (one node per node type), connected, for every test."""
    from medray.cluster.local import local_cluster

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    with local_cluster(CLUSTER_YAML) as cluster:
        yield cluster


def serve_running() -> bool:
    """Whether Serve runs in the connected cluster (a test that starts it shuts it down after)."""
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        return False
    return True


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A private Orthanc PACS with DICOMweb on free ports (medray.dicom.orthanc), stopped at the end;
    the tests that need it skip, saying what to install, where Orthanc is not installed."""
    from medray.dicom.orthanc import orthanc_missing, start_orthanc

    missing = orthanc_missing()
    if missing:
        pytest.skip(missing)
    pacs = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield pacs
    pacs.stop()
