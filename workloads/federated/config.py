"""The settings of a federated run, validated once at the boundary (CLI, notebook, test).

What a site's data may undergo (clipping, noise, budget) is *not* here: each site's operator sets it
in the site's storage (:mod:`workloads.federated.privacy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medray.errors import ConfigError
from workloads.federated.local import LocalTraining

__all__ = ["STRATEGIES", "SiteSpec", "FederatedConfig", "parse_site"]

STRATEGIES = ("fedavg", "fedprox")


@dataclass(frozen=True)
class SiteSpec:
    """A site taking part and the root of its storage as seen from that site's nodes."""

    site: str
    root: Path


def parse_site(text: str) -> SiteSpec:
    """``partner-a=/data/partner-a/prep`` -> SiteSpec."""
    site, sep, root = text.partition("=")
    if not sep or not site or not root:
        raise ConfigError(f"a site is SITE=ROOT (e.g. partner-a=/data/prep), got {text!r}")
    return SiteSpec(site=site.strip(), root=Path(root.strip()))


@dataclass(frozen=True)
class FederatedConfig:
    """Everything a federated run needs; ``python -m workloads.federated --help`` explains each."""

    sites: tuple[SiteSpec, ...]
    rounds: int = 5
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # FedProx's mu
    local: LocalTraining = field(default_factory=LocalTraining)
    # SecAgg+ (Bell et al. 2020): shares per site's key as a share of the sites (1.0 = every site),
    # and the share of those needed to unmask a dropped site (so up to n - threshold may drop).
    num_shares: float = 1.0
    reconstruction_threshold: float = 0.67
    max_weight: float = 1000.0  # the most training volumes one site may weigh in with
    # False: Flower's plain fit workflow, to measure what SecAgg+ costs; sites whose policy requires
    # secure aggregation (the default) refuse to release their updates then.
    secure_aggregation: bool = True
    cpus_per_site: float = 1.0
    timeout_s: float | None = 600.0  # per SecAgg+ stage: a site slower than this counts as dropped
    registry: str | None = None
    name: str = "nodule-federated"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        names = [s.site for s in self.sites]
        checks = [
            (len(self.sites) >= 2, f"federated training needs at least 2 sites, got {len(self.sites)}"),
            (len(set(names)) == len(names), f"each site takes part once, got {names}"),
            (self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}"),
            (self.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"),
            (self.proximal_mu >= 0, f"proximal_mu must be >= 0, got {self.proximal_mu}"),
            (0 < self.num_shares <= 1 and 0 < self.reconstruction_threshold <= 1,
             "num_shares and reconstruction_threshold are shares within (0, 1]"),
            (self.max_weight > 0 and self.cpus_per_site > 0, "max_weight and cpus_per_site must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
