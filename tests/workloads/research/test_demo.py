"""workloads.research.demo: the training stage finds the preprocessing outputs, learns the nodule on the
demo-sized cohort (held-out AUC >= 0.85 on patients it never trained on), writes its split, plots."""

import json

import numpy as np
import pytest
from PIL import Image

from medray.demo.runner import DEMO_PATIENTS, DemoContext
from medray.errors import ConfigError
from medray.models.registry import resolve
from tests.workloads.research.conftest import write_training_data
from workloads.research.demo import DEMO_EPOCHS, stage


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo's cohort (its size and seed), preprocessed faster than the demo does, into the same volumes."""
    return write_training_data(tmp_path_factory.mktemp("demo"), patients=DEMO_PATIENTS, seed=0)


def test_stage_learns_on_the_demo_cohort_writes_its_split_and_registers(ray_cluster, demo_data, node_types,
                                                                        tmp_path):
    ctx = DemoContext(out=tmp_path, node_types=node_types, patients=demo_data.patients)
    with pytest.raises(ConfigError, match="preprocessing stage"):
        stage(ctx)
    # What the preprocessing stage's summary says about its outputs.
    ctx.results["10-preprocess"] = {"volumes": str(demo_data.data / "volumes"), "emr": str(demo_data.labels.parent)}
    summary = stage(ctx)
    assert summary["model"] == "nodule:1" and summary["epochs"] == DEMO_EPOCHS
    # The demo's findings are right: well above chance on patients it never trained on.
    assert summary["val_patients"] >= 20 and summary["val_positive"] >= 10
    assert summary["val_auc"] >= 0.85
    # One worker: the cheaper training type (A100 at a third of the H100's price per GPU), which is free.
    assert summary["worker_node_types"] == ["train-a100"]
    assert summary["train_patients"] + summary["val_patients"] == demo_data.patients
    registered = resolve(ctx.registry, "nodule:latest").manifest
    assert registered.metrics["val_auc"] == pytest.approx(summary["val_auc"], abs=1e-3)
    # The split the diagnosis stage reads: by patient, disjoint, the run's sizes, pseudonyms only.
    split = json.loads((tmp_path / "split.json").read_text())
    assert summary["split"] == str(ctx.split_file) and split["model"] == "nodule:1"
    held_out, train = set(split["held_out"]), set(split["train"])
    assert len(held_out) == summary["val_patients"] and len(train) == summary["train_patients"]
    assert not held_out & train and all(len(p) == 24 for p in held_out | train)
    [figure] = summary["figures"]
    assert figure["path"] == "figures/train-curves.png" and "nodule:1" in figure["caption"]
    image = Image.open(tmp_path / figure["path"])
    assert image.size == (720, 280) and "held-out AUC" in image.text["Description"]
    assert np.asarray(image.convert("L"), dtype=np.float32).std() > 5  # curves drawn, not a blank page
