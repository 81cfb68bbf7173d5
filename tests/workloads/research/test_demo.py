"""workloads.research.demo: the training stage finds the preprocessing outputs, registers ``nodule``, plots."""

import numpy as np
import pytest
from PIL import Image

from medray.demo.runner import DemoContext
from medray.errors import ConfigError
from medray.models.registry import resolve
from workloads.research.demo import stage


def test_stage_trains_on_the_preprocessed_cohort_and_registers(ray_cluster, small_data, node_types, tmp_path):
    ctx = DemoContext(out=tmp_path, node_types=node_types, patients=small_data.patients)
    with pytest.raises(ConfigError, match="preprocessing stage"):
        stage(ctx)
    # What the preprocessing stage's summary says about its outputs.
    ctx.results["20-preprocess"] = {"volumes": str(small_data.data / "volumes"), "emr": str(small_data.labels.parent)}
    summary = stage(ctx, epochs=2)
    assert summary["model"] == "nodule:1" and summary["epochs"] == 2
    # One worker: the cheaper training type (A100 at a third of the H100's price per GPU), which is free.
    assert summary["worker_node_types"] == ["train-a100"]
    assert summary["train_patients"] + summary["val_patients"] == small_data.patients
    registered = resolve(ctx.registry, "nodule:latest").manifest
    assert registered.metrics["val_auc"] == pytest.approx(summary["val_auc"], abs=1e-3)
    [figure] = summary["figures"]
    assert figure["path"] == "figures/train-curves.png" and "nodule:1" in figure["caption"]
    image = Image.open(tmp_path / figure["path"])
    assert image.size == (720, 280) and "held-out AUC" in image.text["Description"]
    assert np.asarray(image.convert("L"), dtype=np.float32).std() > 5  # curves drawn, not a blank page
