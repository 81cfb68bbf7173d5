"""SecAgg+ over site actors on the shared cluster, with sites whose updates are known in advance.

The sites run the real SiteNode (site check, operator policy, DP filter, Flower's secaggplus_mod)
around a client that returns a fixed update, so the aggregate can be checked against the plain
weighted mean and what the coordinator received can be checked for any site's plain update.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from workloads.federated.config import FederatedConfig, SiteSpec
from workloads.federated.privacy import SitePolicy, epsilon, write_policy
from workloads.federated.run import FIRST_NODE_ID, federate, start_sites

SITES = ("main", "partner-a", "partner-b")
WEIGHTS = {"main": 30, "partner-a": 10, "partner-b": 20}
SHAPES = ((40, 50), (7,))
# No clipping (the updates' norms are about 13) and noise of std 4e-8: the aggregate is the plain
# mean within SecAgg+'s quantisation error. The budget allows exactly two rounds.
POLICY = dict(clip_norm=20.0, noise_multiplier=1e-9)
BUDGET = 1.01 * epsilon(SitePolicy(site="x", **POLICY), 2)


def known_update(site: str) -> list[np.ndarray]:
    rng = np.random.default_rng(sorted(SITES).index(site))
    return [rng.uniform(-0.5, 0.5, size=s).astype(np.float32) for s in SHAPES]


class KnownUpdateClient:
    """A Flower NumPyClient whose update is :func:`known_update`; it dies in fit if ROOT/die exists."""

    def __init__(self, site: str, root: Path, settings: object) -> None:
        self.site, self.root = site, root

    def to_client(self):
        from flwr.client import NumPyClient

        outer = self

        class _Client(NumPyClient):
            def fit(self, parameters, config):
                if (outer.root / "die").exists():
                    os._exit(1)  # the site's process dies mid-round, after the key exchange
                return known_update(outer.site), WEIGHTS[outer.site], {}

            def evaluate(self, parameters, config):
                return 0.0, 1, {"auc": 0.5}

        return _Client().to_client()


def known_client(site: str, root: Path, settings: object) -> KnownUpdateClient:
    return KnownUpdateClient(site, root, settings)


def _config(tmp_path: Path, rounds: int) -> FederatedConfig:
    specs = []
    for site in SITES:
        root = tmp_path / site
        root.mkdir()
        write_policy(root, SitePolicy(site=site, epsilon_budget=BUDGET, **POLICY))
        specs.append(SiteSpec(site, root))
    return FederatedConfig(sites=tuple(specs), rounds=rounds, cpus_per_site=0.25, timeout_s=120, max_weight=100.0)


def _initial() -> list[np.ndarray]:
    return [np.zeros(s, np.float32) for s in SHAPES]


def _mean(sites) -> list[np.ndarray]:
    total = sum(WEIGHTS[s] for s in sites)
    return [sum(WEIGHTS[s] * known_update(s)[i] for s in sites) / total for i in range(len(SHAPES))]


def test_masked_aggregate_equals_the_plain_mean_the_coordinator_sees_no_update_and_the_budget_stops_it(
        ray_cluster, tmp_path):
    result = federate(_config(tmp_path, rounds=3), client_factory=known_client, initial=_initial())
    # The sites' budgets allow two rounds: the run stops before the third, and says why.
    assert len(result.rounds) == 2 and "stopped before round 3" in result.stop_reason
    policy = SitePolicy(site="main", epsilon_budget=BUDGET, **POLICY)
    assert [r["epsilon"]["main"] for r in result.rounds] == [epsilon(policy, 1), epsilon(policy, 2)]
    assert all(r["sites"] == sorted(SITES) for r in result.rounds) and result.coordinator_site == "main"
    # Each round adds the sites' mean update (the same update twice), within the quantisation error.
    for got, want in zip(result.weights, _mean(SITES)):
        np.testing.assert_allclose(got, 2 * want, atol=5e-4)

    masked_by_site = {}
    for reply in result.grid.received:
        assert not reply.has_error()
        # The fit replies' plain arrays were cleared by secaggplus_mod: no array record carries data.
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and Key.MASKED_PARAMETERS in configs:
            site = SITES[reply.metadata.src_node_id - FIRST_NODE_ID]
            masked_by_site[site] = [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]
    assert set(masked_by_site) == set(SITES)
    for site, masked in masked_by_site.items():
        vector = masked[1].astype(np.float64).ravel()  # masked[0] is the weight factor
        plain = known_update(site)[0].astype(np.float64).ravel()
        # Uniform over [0, 2^32) and unrelated to the update: the mask hides it.
        assert abs(vector.mean() / 2**32 - 0.5) < 0.05
        assert abs(np.corrcoef(vector, plain)[0, 1]) < 0.15


def test_a_site_killed_mid_round_is_recovered_within_the_threshold(ray_cluster, tmp_path):
    config = _config(tmp_path, rounds=1)
    (tmp_path / "partner-b" / "die").touch()
    nodes = start_sites(config, known_client)
    result = federate(config, client_factory=known_client, nodes=nodes, initial=_initial())
    survivors = ("main", "partner-a")
    assert result.rounds[0]["sites"] == sorted(survivors) and result.rounds[0]["dropped"] == ["partner-b"]
    for got, want in zip(result.weights, _mean(survivors)):
        np.testing.assert_allclose(got, want, atol=5e-4)
    # The dropped site spent nothing of its budget: it released no update.
    assert result.epsilon["partner-b"] == 0.0 and result.epsilon["partner-a"] > 0
