"""Differential privacy a site's operator sets and the research code cannot switch off.

Each site's storage holds its policy (:data:`POLICY_FILE`, written by the site's operator with
:func:`write_policy`); the site's client reads it when it starts and applies it in
:class:`SiteDpFilter`, a Flower client mod that sits between the training code and SecAgg+. Nothing
the coordinator sends changes it.

**Mechanism** (per site, per round): the site's model update ``Δ = w_local - w_global`` (every float
tensor of the state dict, BatchNorm statistics included) is clipped to L2 norm ``C`` (Flower's
``clip_inputs_inplace``, FlatClip of McMahan et al. 2018, arXiv:1710.06963) and Gaussian noise of
standard deviation ``σ = z · 2C`` is added to every coordinate before the update is masked.

**Accounting** (:func:`epsilon`): the unit of privacy is a site's whole dataset in a round
(site-level DP, replace-one neighbours, so the clipped update's L2 sensitivity is ``2C``). Each
round is one Gaussian mechanism with noise multiplier ``z``; every site takes part in every round
(sampling rate 1: no amplification by sampling is claimed); rounds compose adaptively and are
accounted with Rényi DP (Mironov 2017, arXiv:1702.07476) by Opacus's ``RDPAccountant``, which
reports ε at the policy's δ. Secure aggregation hides each update further, but no credit is taken
for it. ``z = 0`` means no noise: ε is infinite and the run says so.

**Budget**: a site's policy caps ε for one run. :func:`rounds_within_budget` tells the coordinator
how many rounds every site allows, so a run stops *before* the round that would exceed a budget; the
filter refuses such a round by itself too (defence in depth), with :class:`PrivacyBudgetError`'s message.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from medray.errors import ConfigError, MedrayError

__all__ = ["POLICY_FILE", "PrivacyBudgetError", "SitePolicy", "load_policy", "write_policy", "epsilon",
           "rounds_within_budget", "SiteDpFilter"]

POLICY_FILE = "federated-policy.json"


class PrivacyBudgetError(MedrayError):
    """A round would spend more privacy than a site's policy allows."""


@dataclass(frozen=True)
class SitePolicy:
    """A site operator's privacy settings for federated training on the site's data."""

    site: str  # whose storage this is: a client of another site refuses to read it
    clip_norm: float  # C: L2 bound of the site's update per round
    noise_multiplier: float  # z: noise std = z * sensitivity (2C)
    delta: float = 1e-5  # δ the accountant reports ε at
    epsilon_budget: float = 10.0  # the most ε one run may spend on this site's data
    require_secure_aggregation: bool = True  # refuse to release an update outside SecAgg+

    def __post_init__(self) -> None:
        checks = [
            (bool(self.site), "site must name the site whose storage holds the policy"),
            (self.clip_norm > 0, f"clip_norm must be > 0, got {self.clip_norm}"),
            (self.noise_multiplier >= 0, f"noise_multiplier must be >= 0, got {self.noise_multiplier}"),
            (0 < self.delta < 1, f"delta must be within (0, 1), got {self.delta}"),
            (self.epsilon_budget > 0, f"epsilon_budget must be > 0, got {self.epsilon_budget}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"privacy policy: {message}")

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of a clipped update under replace-one neighbouring datasets."""
        return 2.0 * self.clip_norm

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise added to each coordinate."""
        return self.noise_multiplier * self.sensitivity

    def public(self) -> dict[str, Any]:
        """What the coordinator may know of the policy (all of it: it holds no secret)."""
        return asdict(self)


def load_policy(root: str | Path) -> SitePolicy:
    """The policy in ``root/POLICY_FILE``; ConfigError saying how to write one when it is missing."""
    path = Path(root) / POLICY_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"site storage {root} has no {POLICY_FILE}: the site's operator writes it "
                          "(workloads.federated.privacy.write_policy; docs/federated.md)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    known = {f.name for f in fields(SitePolicy)}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ConfigError(f"{path} must be an object with the keys {sorted(known)}")
    return SitePolicy(**raw)


def write_policy(root: str | Path, policy: SitePolicy) -> Path:
    """Write a site's policy into its storage (the site operator's step)."""
    path = Path(root) / POLICY_FILE
    path.write_text(json.dumps(asdict(policy), indent=2) + "\n")
    return path


def epsilon(policy: SitePolicy, rounds: int) -> float:
    """ε after ``rounds`` releases under ``policy`` at its δ (RDP, sampling rate 1); inf without noise."""
    if rounds <= 0:
        return 0.0
    if policy.noise_multiplier == 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(policy.noise_multiplier, 1.0, rounds)]
    with warnings.catch_warnings():
        # Little noise puts the best order at the end of Opacus's range: ε is then an upper bound.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(accountant.get_epsilon(policy.delta))


def rounds_within_budget(policies: Mapping[str, SitePolicy], requested: int) -> tuple[int, str | None]:
    """How many of ``requested`` rounds every site's budget allows, and why the run stops early (or None)."""
    for r in range(1, requested + 1):
        for site, policy in sorted(policies.items()):
            spent = epsilon(policy, r)
            if spent > policy.epsilon_budget:
                return r - 1, (f"stopped before round {r}: site {site!r} allows ε ≤ {policy.epsilon_budget:g} "
                               f"at δ = {policy.delta:g} and round {r} would bring it to {spent:.3g}; "
                               "the site's operator sets the budget (docs/federated.md)")
    return requested, None


class SiteDpFilter:
    """Flower client mod: clip the site's update and add Gaussian noise, within the site's budget.

    Put it inside ``secaggplus_mod`` (``mods=[secaggplus_mod, filter]``) so SecAgg+ masks the noisy
    update. It refuses (an error reply, nothing released) a train message outside SecAgg+ when the
    policy requires it, and a round past the budget. ``releases`` counts the updates released.
    """

    def __init__(self, policy: SitePolicy) -> None:
        self.policy, self.site = policy, policy.site
        self.releases = 0

    def __call__(self, msg: Any, ctxt: Any, call_next: Any) -> Any:
        from flwr.app import Error, Message, MessageType
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
        from flwr.compat.common import recorddict_compat as compat
        from flwr.supercore.differential_privacy import clip_inputs_inplace

        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        if self.policy.require_secure_aggregation and RECORD_KEY_CONFIGS not in msg.content.config_records:
            return Message(Error(code=0, reason=f"site {self.site!r} releases updates only under SecAgg+ "
                                                "(its privacy policy requires secure aggregation)"), reply_to=msg)
        spent = epsilon(self.policy, self.releases + 1)
        if spent > self.policy.epsilon_budget:
            return Message(Error(code=0, reason=str(PrivacyBudgetError(
                f"site {self.site!r}: another round would bring ε to {spent:.3g}, over its budget "
                f"{self.policy.epsilon_budget:g}"))), reply_to=msg)
        out = call_next(msg, ctxt)
        if out.has_error():
            return out
        fitres = compat.recorddict_to_fitres(out.content, keep_input=True)
        update = [a.astype(np.float64) for a in parameters_to_ndarrays(fitres.parameters)]
        clip_inputs_inplace(update, self.policy.clip_norm)
        if self.policy.noise_std > 0:
            rng = np.random.default_rng()  # fresh OS entropy every release
            for a in update:
                a += rng.normal(0.0, self.policy.noise_std, a.shape)
        fitres.parameters = ndarrays_to_parameters([a.astype(np.float32) for a in update])
        fitres.metrics = {}  # nothing but the (masked) update and its weight leaves the site
        self.releases += 1
        out.content = compat.fitres_to_recorddict(fitres, keep_input=True)
        return out
