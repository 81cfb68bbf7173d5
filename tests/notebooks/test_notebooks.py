"""Every notebook under notebooks/ runs top to bottom without a cell error, and is stored without outputs.

The notebooks run in their own kernel (this venv's python) in a temporary folder, connected through
``RAY_ADDRESS`` to the test run's shared local cluster, so no second cluster starts on CI's two cores.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL = "medray-test"


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "research.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; strip them before committing"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data dir whose only kernel runs this interpreter (whatever kernels the machine has)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "medray (test)", "language": "python"}))
    return root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, ray_cluster, kernel_dir: Path, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch):
    from nbclient import NotebookClient

    # The kernel inherits this environment: where Jupyter finds the kernel, the cluster, the config, the output.
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    monkeypatch.setenv("MEDRAY_CLUSTER_CONFIG", str(REPO / "cluster.yaml"))
    monkeypatch.setenv("MEDRAY_NOTEBOOK_WORK", str(tmp_path / "work"))
    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    # execute() raises CellExecutionError on the first failing cell, naming it and its traceback.
    NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"{path.name}: {time.monotonic() - start:.0f} s")
    nbformat.write(nb, tmp_path / path.name)  # executed copy, to look at when something is off
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # The pictures are there: every plotting notebook shows at least one PNG.
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} showed no figure"
    assert (tmp_path / "work" / path.stem / "prep" / "volumes").is_dir()
