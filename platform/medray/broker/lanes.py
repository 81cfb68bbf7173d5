"""Priority lanes of a clinical HTTP service: the header a request names its lane in, and each lane's
broker priority class (:data:`medray.broker.policy.PRIORITIES`).

Shared by the services that take such requests (``workloads.diagnosis``) and the clients that send
them (the burst harness, the benchmarks). Pure: no Ray.
"""

from __future__ import annotations

__all__ = ["LANES", "LANE_PRIORITIES", "PRIORITY_HEADER"]

LANES = ("routine", "emergency")
# The priority class of each lane's demand when the broker watches it.
LANE_PRIORITIES = {"routine": "clinical", "emergency": "emergency"}
PRIORITY_HEADER = "X-Medray-Priority"
