"""Fixtures of the diagnosis tests: a model registry, tokens, a pseudonym key, a small cohort."""

import secrets

import pytest
import torch

from medray.models import DEFAULT_INPUT_SPEC, NoduleNetConfig, build_model
from medray.models.registry import register
from medray.security.tokens import add_client


def register_seeded(registry, seed, *, metrics=None, name="nodule", finding="lung-nodule"):
    """Register a NoduleNet with weights fixed by ``seed`` (deterministic answers) as ``name``, finding
    ``finding``; returns its ref."""
    torch.manual_seed(seed)
    model = build_model(NoduleNetConfig())
    weights = registry.parent / f"weights-{seed}.pt"
    torch.save(model.state_dict(), weights)
    entry = register(registry, name, weights, input_spec=DEFAULT_INPUT_SPEC,
                     model_config=NoduleNetConfig().to_dict(), metrics=metrics or {"auroc": 0.5}, finding=finding)
    return entry.manifest.ref


@pytest.fixture(scope="module")
def service_dir(tmp_path_factory):
    """Registry with nodule:1 and a second expert's model ich:1 (intracranial hemorrhage), token file
    (one client per scope), key file; returns (dir, tokens)."""
    root = tmp_path_factory.mktemp("diagnosis")
    (root / "registry").mkdir()
    register_seeded(root / "registry", seed=1)
    register_seeded(root / "registry", seed=2, name="ich", finding="intracranial-hemorrhage")
    tokens = {scope: add_client(root / "tokens.json", f"{scope}-client", [scope])
              for scope in ("clinic", "emergency", "research", "admin")}
    key = root / "deid.key"
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    return root, tokens


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from medray.data.cohort import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, patients=4, seed=3, rows=64, slices=10)
    return out
