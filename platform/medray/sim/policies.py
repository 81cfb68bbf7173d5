"""The policies a simulated day compares: medray's own and two baselines, as placement orders and switches.

* ``medray``: every unit goes where :func:`medray.scheduling.placement.plan` ranks it (the workloads'
  own profiles: roles as preferences, CPU work on CPU nodes first, cheapest first), drained nodes
  excluded; clinical lanes are separate priority classes whose demand feeds
  :class:`medray.broker.policy.BrokerCore`, which lends research GPUs and gives them back; GPU guards
  (:func:`medray.cluster.guard.next_state`) drain nodes whose readings go bad.
* ``static``: the symmetric design, a static partition: each family only on its first role's node
  types (diagnosis on inference GPUs, research on training GPUs, preprocessing on CPU nodes), ranked by
  the same placement; separate lanes, no lending, no guard.
* ``first-fit``: no roles and no priorities: every unit takes the first node of the fleet file, in its
  order, where it fits (the site wall still holds: PHI never leaves its site, and unpinned work stays at
  the head's site); the clinical lanes of
  a site are one deployment with one FIFO queue; no lending, no guard.

* ``medray-elastic`` (a what-if, not how medray ships): medray with research jobs that may also take
  inference GPUs (roles ``train`` then ``infer``), which the broker takes back as it takes training
  GPUs; it asks what the design's utilisation claim needs.

Within a node type every policy packs: the first node with room, as Ray fills a type's nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from medray.cluster.node_types import ROLES, NodeType
from medray.errors import ConfigError
from medray.scheduling.placement import WorkloadProfile, plan

__all__ = ["Policy", "STATIC", "FIRST_FIT", "MEDRAY", "MEDRAY_ELASTIC", "POLICIES", "policy_named", "candidate_types"]


@dataclass(frozen=True)
class Policy:
    """How a simulated cluster places work (``plan``, ``own-role`` or ``first-fit``) and which of
    medray's mechanisms run: ``priority_lanes`` (a lane per class), ``lending`` (the broker), ``guard``.
    ``research_roles``: research's roles instead of the trace's (a what-if)."""

    name: str
    placement: str
    priority_lanes: bool
    lending: bool
    guard: bool
    research_roles: tuple[str, ...] | None = None


STATIC = Policy("static", placement="own-role", priority_lanes=True, lending=False, guard=False)
FIRST_FIT = Policy("first-fit", placement="first-fit", priority_lanes=False, lending=False, guard=False)
MEDRAY = Policy("medray", placement="plan", priority_lanes=True, lending=True, guard=True)
MEDRAY_ELASTIC = Policy("medray-elastic", placement="plan", priority_lanes=True, lending=True, guard=True,
                        research_roles=("train", "infer"))
POLICIES = (STATIC, FIRST_FIT, MEDRAY, MEDRAY_ELASTIC)

_WORKER_ROLES = tuple(r for r in ROLES if r != "coordinator")


def policy_named(name: str) -> Policy:
    """The policy called ``name``; :class:`~medray.errors.ConfigError` for another name."""
    for p in POLICIES:
        if p.name == name:
            return p
    raise ConfigError(f"unknown policy {name!r}; policies are {[p.name for p in POLICIES]}")


def candidate_types(policy: Policy, profile: WorkloadProfile, node_types: Sequence[NodeType]) -> list[NodeType]:
    """The node types ``profile``'s units may use under ``policy``, in the order they are tried."""
    if policy.placement == "plan":
        return list(plan(profile, node_types).candidates)
    if policy.placement == "own-role":
        return list(plan(replace(profile, roles=profile.roles[:1]), node_types).candidates)
    if policy.placement == "first-fit":
        anywhere = replace(profile, roles=_WORKER_ROLES)
        feasible = set(plan(anywhere, node_types).candidates)
        site = profile.site or next((t.site for t in node_types if t.is_head), None)
        return [t for t in node_types if t in feasible and t.site == site]
    raise ConfigError(f"policy {policy.name!r}: unknown placement {policy.placement!r}")
