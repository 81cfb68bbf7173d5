"""A site's Flower client, as a Ray actor pinned to the site: the only code that touches its data.

:class:`SiteNode` is one Flower node. It starts on a node of its site (a hard label selector from
:func:`medray.cluster.sites.site_options`; no fallback) and checks that it did before anything else,
reads the site's operator policy (:mod:`workloads.federated.privacy`), and runs a Flower
``ClientApp`` with the mods ``[secaggplus_mod, SiteDpFilter]`` (SecAgg+'s mod for SecAgg+ messages):
every train message's update is clipped and noised by the site's filter, then masked by SecAgg+,
inside this actor.

:class:`NoduleClient` is the research workload's model trained on the site's shards: ``fit`` returns
the round's update ``w_local - w_global`` (not the weights: the DP filter bounds the update, and
SecAgg+'s quantisation range suits small values); ``evaluate`` returns the global model's loss and AUC
on the site's held-out patients.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import NumPyClient

from medray.cluster.sites import SiteAccessError, current_site, require_site
from medray.logs import get_logger
from medray.models import build_model
from workloads.federated.local import (
    LocalTraining,
    SiteData,
    evaluate,
    get_arrays,
    read_site_data,
    set_arrays,
    train_round,
)
from workloads.federated.privacy import SiteDpFilter, load_policy

__all__ = ["ClientFactory", "NoduleClient", "nodule_client", "SiteNode"]

_log = get_logger("medray.federated.site")

# (site, storage root, local training settings) -> a Flower NumPyClient; built in the site's actor.
ClientFactory = Callable[[str, Path, LocalTraining], Any]


class NoduleClient(NumPyClient):
    """NoduleNet on one site's data (Flower's legacy NumPyClient, which SecAgg+'s mod speaks)."""

    def __init__(self, site: str, root: Path, settings: LocalTraining) -> None:
        self.site, self.settings = site, settings
        self.data: SiteData = read_site_data(site, root, settings)
        self.model = build_model({"width": settings.width, "dropout": settings.dropout,
                                  "in_shape": list(self.data.spec.shape)})

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return get_arrays(self.model)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        set_arrays(self.model, parameters)
        round_ = int(config.get("round", 0))
        train_round(self.model, self.data.train, self.settings, round_=round_,
                    proximal_mu=float(config.get("proximal_mu", 0.0)))
        update = [local - np.asarray(start, dtype=local.dtype)
                  for local, start in zip(get_arrays(self.model), parameters)]
        return update, len(self.data.train), {}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        set_arrays(self.model, parameters)
        loss, auc, n = evaluate(self.model, self.data.val)
        return loss, n, {"auc": auc}


def nodule_client(site: str, root: Path, settings: LocalTraining) -> NoduleClient:
    """The default :data:`ClientFactory`."""
    return NoduleClient(site, root, settings)


class SiteNode:
    """One site's Flower node (use as a Ray actor with ``site_options(site)``)."""

    def __init__(self, site: str, root: str, node_id: int, settings: LocalTraining,
                 client_factory: ClientFactory = nodule_client) -> None:
        import torch
        from flwr.app import Context, RecordDict
        from flwr.client.mod import secaggplus_mod
        from flwr.clientapp import ClientApp
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
        from flwr.supercore.task_identity import TaskIdentity

        require_site(site, root)  # before any file of the site is opened
        torch.set_num_threads(1)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = node_id, 1, node_id
        self.site, self.root = site, Path(root)
        self.policy = load_policy(self.root)
        if self.policy.site != site:
            raise SiteAccessError(f"storage {self.root} belongs to site {self.policy.site!r} (its policy says so): "
                                  f"a client of site {site!r} never reads it")
        self.filter = SiteDpFilter(self.policy)
        self._client = client_factory(site, self.root, settings)
        self._context = Context(run_id=1, node_id=node_id, node_config={"site": site}, state=RecordDict(),
                                run_config={})

        def secure_aggregation(msg: Any, ctxt: Any, call_next: Any) -> Any:
            # SecAgg+ messages carry its config record; a plain train message (--plain-aggregation)
            # goes straight to the filter, which refuses it when the policy requires SecAgg+.
            if RECORD_KEY_CONFIGS in msg.content.config_records:
                return secaggplus_mod(msg, ctxt, call_next)
            return call_next(msg, ctxt)

        self._app = ClientApp(client_fn=lambda context: self._client.to_client(),
                              mods=[secure_aggregation, self.filter])

    def __repr__(self) -> str:
        # Ray prefixes the actor's log lines with it: which site a line came from.
        return f"SiteNode(site={self.site})"

    def describe(self) -> dict[str, Any]:
        """What the coordinator may know: the site, its node, its policy, its input spec and counts."""
        import ray

        data = getattr(self._client, "data", None)
        return {"site": self.site, "site_label": current_site(), "node_id": ray.get_runtime_context().get_node_id(),
                "policy": self.policy.public(),
                "input_spec": data.spec.to_dict() if data is not None else None,
                "counts": data.counts() if data is not None else {}}

    def handle(self, message: Any) -> Any:
        """Run one Flower message through the ClientApp (mods included) and return its reply."""
        return self._app(message, self._context)
