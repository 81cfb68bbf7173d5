"""medray's own metrics, exported through Ray's metrics system (Prometheus format).

Every metric is named ``medray_<name>`` and created once per process, so call sites can ask for it
wherever they need it. Tag values must never carry PHI: use lanes, roles, reason codes, model refs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = ["PREFIX", "counter", "gauge", "histogram"]

PREFIX = "medray_"


@lru_cache(maxsize=None)
def counter(name: str, description: str, tag_keys: Sequence[str] = ()) -> Any:
    """A ``ray.util.metrics.Counter`` named ``medray_<name>``."""
    from ray.util.metrics import Counter

    return Counter(PREFIX + name, description=description, tag_keys=tuple(tag_keys))


@lru_cache(maxsize=None)
def gauge(name: str, description: str, tag_keys: Sequence[str] = ()) -> Any:
    """A ``ray.util.metrics.Gauge`` named ``medray_<name>``."""
    from ray.util.metrics import Gauge

    return Gauge(PREFIX + name, description=description, tag_keys=tuple(tag_keys))


@lru_cache(maxsize=None)
def histogram(
    name: str, description: str, boundaries: Sequence[float], tag_keys: Sequence[str] = ()
) -> Any:
    """A ``ray.util.metrics.Histogram`` named ``medray_<name>`` with the given bucket bounds."""
    from ray.util.metrics import Histogram

    return Histogram(PREFIX + name, description=description, boundaries=list(boundaries),
                     tag_keys=tuple(tag_keys))
