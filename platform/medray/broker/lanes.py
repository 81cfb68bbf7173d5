"""Priority lanes of a clinical HTTP service: where each lane's requests go, each lane's broker
priority class (:data:`medray.broker.policy.PRIORITIES`), and the header older clients name a lane in.

Each lane has an HTTP ingress of its own (``LANE_PREFIXES``: the emergency lane is a Serve
application of its own under ``/emergency``), so no routine request is ever parsed, decoded or
queued in front of an emergency.

Shared by the services that take such requests (``workloads.diagnosis``) and the clients that send
them (the burst harness, the benchmarks). Pure: no Ray.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

__all__ = ["LANES", "LANE_PREFIXES", "LANE_PRIORITIES", "PRIORITY_HEADER", "InFlight", "lane_url"]

LANES = ("routine", "emergency")
# The priority class of each lane's demand when the broker watches it.
LANE_PRIORITIES = {"routine": "clinical", "emergency": "emergency"}
# The URL prefix of each lane's ingress: `/v1/diagnose` is routine, `/emergency/v1/diagnose` emergency.
LANE_PREFIXES = {"routine": "", "emergency": "/emergency"}
# A routine ingress answers requests that name the emergency lane here with a redirect to it.
PRIORITY_HEADER = "X-Medray-Priority"


def lane_url(lane: str, path: str) -> str:
    """``path`` (e.g. ``/v1/diagnose``) on ``lane``'s ingress, relative to the service's base URL."""
    return f"{LANE_PREFIXES[lane]}{path}"


@dataclass
class InFlight:
    """The requests of one lane a front door has taken and not answered yet, and since when.

    What the broker reads as a lane's queue (:meth:`snapshot`): how many wait and how long the
    oldest has waited. Times are the caller's clock (``time.monotonic()`` in a replica).
    """

    _since: dict[int, float] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=itertools.count)

    def start(self, now: float) -> int:
        """One request taken at ``now``; returns the token :meth:`end` takes."""
        token = next(self._ids)
        self._since[token] = now
        return token

    def end(self, token: int) -> None:
        """The request of ``token`` was answered (or refused)."""
        self._since.pop(token, None)

    def snapshot(self, now: float) -> tuple[int, float]:
        """(requests in flight, seconds the oldest of them has waited; 0 when none)."""
        return len(self._since), max((now - t for t in self._since.values()), default=0.0)
