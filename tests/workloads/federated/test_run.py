"""A federated run of the research model on two partner sites' shards, through the CLI entry point."""

from __future__ import annotations

import math

from medray.cluster.node_types import SITE_LABEL
from medray.models import build_model
from medray.models.registry import load_state_dict
from tests.workloads.federated.conftest import TEST_POLICY
from workloads.federated.__main__ import main
from workloads.federated.privacy import SitePolicy, epsilon
from workloads.federated.run import SITE_ACTOR_PREFIX


def test_two_sites_two_rounds_register_a_model_with_its_epsilon(ray_cluster, partner_sites, tmp_path, capsys):
    import ray

    from medray.cluster.ray_internals import actors

    registry = tmp_path / "registry"
    argv = [f"--site={s}={r}" for s, r in partner_sites.roots.items()]
    assert main([*argv, "--rounds=2", "--width=8", "--local-epochs=1", "--strategy=fedprox",
                 f"--registry={registry}"]) == 0
    out = capsys.readouterr().out
    assert "registered: nodule-federated:1" in out and "privacy spent" in out

    manifest, state = load_state_dict(registry, "nodule-federated:1")
    policy = SitePolicy(site="partner-a", **TEST_POLICY)
    assert manifest.metrics["rounds"] == 2
    assert manifest.metrics["epsilon"] == epsilon(policy, 2) > epsilon(policy, 1) > 0
    assert manifest.metrics["delta"] == TEST_POLICY["delta"]
    assert all(math.isfinite(manifest.metrics[f"val_auc_{s}"]) for s in partner_sites.roots)
    model = build_model(manifest.model_config)
    model.load_state_dict(state)  # the diagnosis service loads it the same way

    # Every site actor (the only code that reads shards) ran on a node of the site it served, as
    # Ray's actor table shows: this run's and every earlier test's.
    site_of_node = {n["NodeID"]: n["Labels"].get(SITE_LABEL) for n in ray.nodes()}
    table = {**actors("DEAD"), **actors("ALIVE")}
    ran = [(a["Name"].removeprefix(SITE_ACTOR_PREFIX).split("/")[0], site_of_node[a["Address"]["NodeID"]])
           for a in table.values() if a["ActorClassName"] == "SiteNode" and a["Name"].startswith(SITE_ACTOR_PREFIX)]
    assert {"partner-a", "partner-b"} <= {served for served, _ in ran}
    assert all(served == where for served, where in ran), ran
