"""The coordinator: site actors, Flower's ServerApp with SecAgg+ and FedAvg/FedProx, the registry.

:func:`federate` runs on the main site (the driver of ``ray job submit`` runs on the head). It

1. starts one :class:`~workloads.federated.site.SiteNode` per site with a hard site label selector;
2. reads each site's public description (policy, input spec, counts) and asks the sites' privacy
   budgets how many rounds they allow (:func:`~workloads.federated.privacy.rounds_within_budget`):
   the run stops before a round that would exceed one, and says so;
3. runs Flower's legacy ``DefaultWorkflow`` with ``SecAggPlusWorkflow`` as its fit workflow over a
   :class:`~workloads.federated.grid.SiteGrid`, the strategy being Flower's FedAvg or FedProx wrapped
   in :class:`UpdateStrategy` (sites send updates; the strategy adds the securely averaged update
   to the global model);
4. evaluates the global model at every site on its held-out patients (round 0 = the initial model);
5. registers the final model with (ε, δ) and the per-site AUCs in its manifest.
"""

from __future__ import annotations

import math
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import EvaluateIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg, FedProx, Strategy

from medray.cluster.sites import current_site, site_options
from medray.errors import ConfigError
from medray.logs import get_logger
from medray.models import build_model
from workloads.federated.config import FederatedConfig
from workloads.federated.grid import SiteGrid
from workloads.federated.local import get_arrays, set_arrays
from workloads.federated.privacy import PrivacyBudgetError, SitePolicy, epsilon, rounds_within_budget
from workloads.federated.site import ClientFactory, SiteNode, nodule_client

__all__ = ["FIRST_NODE_ID", "SITE_ACTOR_PREFIX", "site_actor_name", "UpdateStrategy", "FederatedResult", "start_sites", "federate"]

_log = get_logger("medray.federated.run")

FIRST_NODE_ID = 2  # Flower's coordinator is node 1 (SUPERLINK_NODE_ID)
SITE_ACTOR_PREFIX = "federated-site/"


class UpdateStrategy(Strategy):
    """A Flower strategy over sites that send updates: ``global += aggregate(updates)``.

    ``inner`` (FedAvg, FedProx) selects the sites, configures them and averages what they send; this
    wrapper keeps the global model, adds the average to it, and records per round which sites
    contributed (for the privacy accounting) and what each site's evaluation said.
    """

    def __init__(self, inner: Strategy, initial: list[np.ndarray], sites: dict[int, str],
                 policies: dict[str, SitePolicy]) -> None:
        self.inner, self.sites, self.policies = inner, sites, policies
        self.current = [a.copy() for a in initial]
        self.contributions: Counter[str] = Counter()
        self.rounds: list[dict[str, Any]] = []
        self._started = 0.0
        self._sampled: set[str] = set()

    def initialize_parameters(self, client_manager: Any) -> Parameters:
        return ndarrays_to_parameters(self.current)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        self._started = time.perf_counter()
        pairs = self.inner.configure_fit(server_round, parameters, client_manager)
        self._sampled = {self.sites[proxy.node_id] for proxy, _ in pairs}
        for _, ins in pairs:
            ins.config["round"] = server_round
        return pairs

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, FitRes]], failures: list[Any]) -> Any:
        aggregated, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if aggregated is None:
            first = str(failures[0][1] if isinstance(failures[0], tuple) else failures[0])[:300] if failures else ""
            raise RuntimeError(f"round {server_round} aggregated nothing ({len(failures)} failures; first: {first})")
        update = parameters_to_ndarrays(aggregated)
        self.current = [(g + u).astype(g.dtype) for g, u in zip(self.current, update)]
        contributed = sorted(self.sites[proxy.node_id] for proxy, _ in results)
        self.contributions.update(contributed)
        self.rounds.append({"round": server_round, "sites": contributed,
                            "dropped": sorted(self._sampled - set(contributed)),
                            "fit_s": time.perf_counter() - self._started,
                            "epsilon": {s: epsilon(p, self.contributions[s]) for s, p in self.policies.items()}})
        return ndarrays_to_parameters(self.current), metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list[tuple[Any, Any]], failures: list[Any]) -> Any:
        per_site = {self.sites[proxy.node_id]: {"loss": float(res.loss), "volumes": int(res.num_examples),
                                                "auc": float(res.metrics.get("auc", math.nan))}
                    for proxy, res in results}
        if self.rounds and self.rounds[-1]["round"] == server_round:
            self.rounds[-1]["val"] = per_site
        return _weighted_loss(per_site), {}

    def evaluate(self, server_round: int, parameters: Parameters) -> Any:
        return None  # the coordinator holds no data: evaluation happens at the sites


def _weighted_loss(per_site: dict[str, dict[str, float]]) -> float | None:
    n = sum(v["volumes"] for v in per_site.values())
    return sum(v["loss"] * v["volumes"] for v in per_site.values()) / n if n else None


@dataclass
class FederatedResult:
    """What a federated run did: per-round records, privacy spent, the registered model."""

    rounds: list[dict[str, Any]]
    initial_val: dict[str, dict[str, float]]
    epsilon: dict[str, float]  # per site, at its policy's delta
    delta: dict[str, float]
    sites: list[dict[str, Any]]
    stop_reason: str | None
    seconds: float
    stage_seconds: dict[str, float]
    coordinator_site: str | None = None  # the medray.io/site of the node the coordinator ran on
    ref: str | None = None
    registry_path: str | None = None
    weights: list[np.ndarray] = field(default_factory=list, repr=False)
    grid: SiteGrid | None = field(default=None, repr=False)

    def table(self) -> str:
        """One line per round: time, contributing sites, ε so far, held-out loss and AUC per site."""
        lines = ["round  fit_s  max ε     sites                  val (loss / auc per site)"]
        for r in [{"round": 0, "fit_s": 0.0, "sites": [], "val": self.initial_val, "epsilon": {}}, *self.rounds]:
            val = ", ".join(f"{s} {v['loss']:.3f}/{v['auc']:.3f}" for s, v in sorted(r.get("val", {}).items()))
            eps = max(r["epsilon"].values(), default=0.0)
            lines.append(f"{r['round']:>5}  {r['fit_s']:5.1f}  {eps:<8.3g}  {','.join(r['sites']) or '-':<21}  {val}")
        eps = ", ".join(f"{s} ε={e:.3g} (δ={self.delta[s]:g})" for s, e in sorted(self.epsilon.items()))
        lines.append(f"privacy spent: {eps}")
        if self.stop_reason:
            lines.append(self.stop_reason)
        return "\n".join(lines)


def start_sites(config: FederatedConfig, client_factory: ClientFactory = nodule_client) -> dict[int, Any]:
    """One SiteNode actor per site, each pinned to its site (node ids FIRST_NODE_ID.. in config order)."""
    import ray

    actor = ray.remote(SiteNode)
    run = uuid.uuid4().hex[:8]
    return {i: actor.options(**site_options(s.site, num_cpus=config.cpus_per_site, max_restarts=0,
                                            name=site_actor_name(s.site, run)))
            .remote(s.site, str(s.root), i, config.local, client_factory)
            for i, s in enumerate(config.sites, start=FIRST_NODE_ID)}


def site_actor_name(site: str, run: str) -> str:
    """``federated-site/SITE/RUN``: Ray's actor table then shows which site each reader served."""
    return f"{SITE_ACTOR_PREFIX}{site}/{run}"


def _no_metrics(metrics: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    return {}  # per-site metrics are kept by UpdateStrategy, by site


def _strategy(config: FederatedConfig) -> Strategy:
    common = dict(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=2, min_evaluate_clients=1,
                  min_available_clients=2, accept_failures=True,
                  fit_metrics_aggregation_fn=_no_metrics, evaluate_metrics_aggregation_fn=_no_metrics)
    if config.strategy == "fedprox":
        return FedProx(proximal_mu=config.proximal_mu, **common)
    return FedAvg(**common)


def _evaluate_sites(grid: SiteGrid, sites: dict[int, str], arrays: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Every site's held-out loss and AUC for ``arrays`` (Flower evaluate messages, outside a round)."""
    from flwr.app import Message, MessageType
    from flwr.compat.common import recorddict_compat as compat

    content = compat.evaluateins_to_recorddict(EvaluateIns(ndarrays_to_parameters(arrays), {}), keep_input=True)
    replies = grid.send_and_receive([Message(content, nid, MessageType.EVALUATE, group_id="0") for nid in sites])
    out = {}
    for reply in replies:
        if reply.has_error():
            continue
        res = compat.recorddict_to_evaluateres(reply.content)
        out[sites[reply.metadata.src_node_id]] = {"loss": float(res.loss), "volumes": int(res.num_examples),
                                                  "auc": float(res.metrics.get("auc", math.nan))}
    return out


def _describe(nodes: dict[int, Any]) -> list[dict[str, Any]]:
    import ray

    return ray.get([node.describe.remote() for node in nodes.values()])


def federate(config: FederatedConfig, *, client_factory: ClientFactory = nodule_client,
             nodes: dict[int, Any] | None = None, initial: list[np.ndarray] | None = None) -> FederatedResult:
    """Run the federated rounds on the connected cluster; register the model when ``config.registry``.

    ``nodes``: site actors already started (:func:`start_sites`), else started here and stopped after.
    ``initial``: the initial global arrays (default: a seeded NoduleNet for the sites' input spec).
    Raises PrivacyBudgetError before any round when a site's budget allows none.
    """
    import ray
    import torch
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from medray.cluster.local import connect

    t0 = time.perf_counter()
    connect()
    own_nodes = nodes is None
    nodes = nodes if nodes is not None else start_sites(config, client_factory)
    try:
        described = _describe(nodes)
        sites = {nid: d["site"] for nid, d in zip(nodes, described)}
        policies = {d["site"]: SitePolicy(**d["policy"]) for d in described}
        specs = {str(d["input_spec"]) for d in described}
        if len(specs) != 1:
            raise ConfigError(f"the sites' shards were normalised with {len(specs)} different input specs: "
                              "every site must preprocess with the same InputSpec")
        rounds, stop_reason = rounds_within_budget(policies, config.rounds)
        if rounds == 0:
            raise PrivacyBudgetError(stop_reason or "no round allowed")
        if stop_reason:
            _log.warning("%s", stop_reason)
        spec = described[0]["input_spec"]
        model_config = {"width": config.local.width, "dropout": config.local.dropout,
                        "in_shape": list(spec["shape"]) if spec else [16, 64, 64]}
        if initial is None:
            torch.manual_seed(config.local.seed)
            initial = get_arrays(build_model(model_config))
        strategy = UpdateStrategy(_strategy(config), initial, sites, policies)
        grid = SiteGrid(nodes)
        initial_val = _evaluate_sites(grid, sites, initial)
        # SecAgg+ quantises every coordinate within ±clipping_range: a clipped update's coordinate is
        # at most C, and its noise stays within 6 std with probability 1 - 2e-9.
        clipping_range = max(p.clip_norm + 6 * p.noise_std for p in policies.values())
        fit_workflow = SecAggPlusWorkflow(num_shares=config.num_shares,
                                          reconstruction_threshold=config.reconstruction_threshold,
                                          max_weight=config.max_weight, clipping_range=clipping_range,
                                          timeout=config.timeout_s) if config.secure_aggregation else None
        app = ServerApp()

        @app.main()
        def main(grid_: Any, context: Any) -> None:
            legacy = LegacyContext(context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
            DefaultWorkflow(fit_workflow=fit_workflow)(grid_, legacy)

        from flwr.app import Context, RecordDict

        app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}))
        if len(strategy.rounds) < rounds:
            raise RuntimeError(f"only {len(strategy.rounds)} of {rounds} rounds completed: too few sites "
                               "answered (SecAgg+ needs its threshold); see the site actors' logs")
        eps = {s: epsilon(policies[s], strategy.contributions[s]) for s in policies}
        result = FederatedResult(
            rounds=strategy.rounds, initial_val=initial_val, epsilon=eps,
            delta={s: p.delta for s, p in policies.items()}, sites=described, stop_reason=stop_reason,
            seconds=time.perf_counter() - t0, stage_seconds=dict(grid.stage_seconds),
            coordinator_site=current_site(), weights=strategy.current, grid=grid)
        if config.registry:
            _register(result, config, model_config, spec)
        return result
    finally:
        if own_nodes:
            for node in nodes.values():
                ray.kill(node)


def _register(result: FederatedResult, config: FederatedConfig, model_config: dict[str, Any],
              spec: dict[str, Any]) -> None:
    import torch

    from medray.models.registry import register

    model = build_model(model_config)
    set_arrays(model, result.weights)
    last = result.rounds[-1].get("val", {})
    metrics: dict[str, float] = {"rounds": len(result.rounds), "epsilon": max(result.epsilon.values()),
                                 "delta": max(result.delta.values()), "sites": len(result.sites)}
    metrics.update({f"epsilon_{s}": e for s, e in result.epsilon.items()})
    metrics.update({f"val_auc_{s}": v["auc"] for s, v in last.items()})
    if last:
        metrics["val_loss"] = float(_weighted_loss(last) or math.nan)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pt"
        torch.save(model.state_dict(), weights)
        entry = register(config.registry, config.name, weights, input_spec=spec, metrics=metrics,
                         model_config=model.config.to_dict())
    result.ref, result.registry_path = entry.manifest.ref, str(entry.path)
    _log.info("registered %s (ε %.3g)", result.ref, metrics["epsilon"])
