"""Routing by measured sparsity: which parameter groups go to the parameter servers, which to AllReduce.

The update density of a parameter group in one step is the share of its rows (first dimension;
elements for 0/1-d parameters) whose gradient is non-zero. An embedding table whose batches touch
a few hundred of its 100,000 rows has a density near 0.003; a dense layer has 1.0. Groups whose mean
density over the first steps is below ``threshold`` and that can be served row by row (embedding
tables) go to the parameter servers; the rest are all-reduced. A pin in the config overrides the
measurement for its group. Pure functions: no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from medray.errors import ConfigError

__all__ = ["ALLREDUCE", "PARAMETER_SERVER", "ROUTES", "Routing", "density", "measure_densities", "parse_pins",
           "route"]

PARAMETER_SERVER = "ps"
ALLREDUCE = "allreduce"
ROUTES = (PARAMETER_SERVER, ALLREDUCE)


@dataclass(frozen=True)
class Routing:
    """Where each group goes, the densities measured, the threshold and the pins that decided it."""

    routes: dict[str, str]
    densities: dict[str, float]
    threshold: float
    pinned: dict[str, str] = field(default_factory=dict)

    @property
    def parameter_server(self) -> tuple[str, ...]:
        return tuple(g for g, r in self.routes.items() if r == PARAMETER_SERVER)

    @property
    def allreduce(self) -> tuple[str, ...]:
        return tuple(g for g, r in self.routes.items() if r == ALLREDUCE)

    def describe(self) -> str:
        """One log line: each group's density and route (pins marked)."""
        return "; ".join(f"{g}: density {self.densities.get(g, float('nan')):.4f} -> {r}"
                         f"{' (pinned)' if g in self.pinned else ''}" for g, r in self.routes.items())


def density(grad: torch.Tensor | None) -> float:
    """The share of rows (elements of a 0/1-d tensor) of ``grad`` that are non-zero; 0 for no gradient."""
    if grad is None:
        return 0.0
    if grad.is_sparse:
        grad = grad.coalesce().to_dense()
    if grad.dim() < 2:
        return float((grad != 0).float().mean())
    return float((grad.reshape(grad.shape[0], -1) != 0).any(dim=1).float().mean())


def measure_densities(groups: Mapping[str, Iterable[torch.nn.Parameter]],
                      steps: Iterable[Callable[[], torch.Tensor]]) -> dict[str, float]:
    """Mean density per group over ``steps`` (each returns a loss to back-propagate; grads are cleared).

    A group's density in a step is the largest of its parameters' (a tower is dense if any layer is).
    """
    params = {g: list(p) for g, p in groups.items()}
    totals = dict.fromkeys(params, 0.0)
    n = 0
    for loss_of in steps:
        for ps in params.values():
            for p in ps:
                p.grad = None
        loss_of().backward()
        for g, ps in params.items():
            totals[g] += max((density(p.grad) for p in ps), default=0.0)
        n += 1
    if not n:
        raise ConfigError("measuring update densities needs at least one step")
    for ps in params.values():
        for p in ps:
            p.grad = None
    return {g: t / n for g, t in totals.items()}


def parse_pins(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"codes=ps,tower=allreduce"`` (or a mapping) -> ``{"codes": "ps", "tower": "allreduce"}``."""
    if not text:
        return {}
    items = text.items() if isinstance(text, Mapping) else (p.partition("=")[::2] for p in str(text).split(","))
    pins = {str(g).strip(): str(r).strip() for g, r in items}
    bad = {g: r for g, r in pins.items() if not g or r not in ROUTES}
    if bad:
        raise ConfigError(f"routing pins must be GROUP={'|'.join(ROUTES)}, got {bad}")
    return pins


def route(densities: Mapping[str, float], *, threshold: float, row_sparse: Iterable[str],
          pinned: Mapping[str, str] | None = None) -> Routing:
    """Groups in ``row_sparse`` below ``threshold`` -> parameter servers, the rest -> AllReduce; pins win.

    Raises ConfigError for a pin on an unknown group or one that sends a non-row-sparse group to the servers.
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"the routing threshold must be within (0, 1], got {threshold!r}")
    pins = dict(pinned or {})
    sparse_ok = set(row_sparse)
    unknown = sorted(set(pins) - set(densities))
    if unknown:
        raise ConfigError(f"routing pins name unknown parameter groups {unknown}; groups: {sorted(densities)}")
    wrong = sorted(g for g, r in pins.items() if r == PARAMETER_SERVER and g not in sparse_ok)
    if wrong:
        raise ConfigError(f"only embedding tables can be served by parameter servers, not {wrong}")
    routes = {g: pins.get(g) or (PARAMETER_SERVER if g in sparse_ok and d < threshold else ALLREDUCE)
              for g, d in densities.items()}
    return Routing(routes=routes, densities=dict(densities), threshold=threshold, pinned=pins)
