"""Priority lanes of a clinical HTTP service: the header a request names its lane in, and each lane's
broker priority class (:data:`medray.broker.policy.PRIORITIES`).

Shared by the services that take such requests (``workloads.diagnosis``) and the clients that send
them (the burst harness, the benchmarks). Pure: no Ray.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

__all__ = ["LANES", "LANE_PRIORITIES", "PRIORITY_HEADER", "InFlight"]

LANES = ("routine", "emergency")
# The priority class of each lane's demand when the broker watches it.
LANE_PRIORITIES = {"routine": "clinical", "emergency": "emergency"}
PRIORITY_HEADER = "X-Medray-Priority"


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
