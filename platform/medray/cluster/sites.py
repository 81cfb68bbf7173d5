"""Sites: where nodes stand (``medray.io/site``), and the wall around each site's data.

A site is a hospital: ``main`` (the head's site, where coordinators run) or a partner. PHI and a
site's preprocessed shards never leave it. Work that reads a site's data is pinned to that site with
a hard label selector (:func:`site_options`: no fallback strategy, so Ray never places it elsewhere)
and checks where it runs before it opens a file (:func:`require_site`), so a misplaced reader fails
loudly instead of reading another site's storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medray.cluster.node_types import SITE_LABEL, NodeType
from medray.errors import MedrayError

__all__ = ["SiteAccessError", "main_site", "partner_sites", "current_site", "require_site", "site_options"]


class SiteAccessError(MedrayError):
    """Code tried to read a site's data on a node of another site (or outside the cluster)."""


def main_site(node_types: Sequence[NodeType]) -> str:
    """The site of the head node type (where coordinators run)."""
    heads = [t.site for t in node_types if t.is_head]
    if not heads:
        raise MedrayError("cluster config has no head node type: set head_node_type")
    return heads[0]


def partner_sites(node_types: Sequence[NodeType]) -> tuple[str, ...]:
    """The sites other than the main one, sorted."""
    main = main_site(node_types)
    return tuple(sorted({t.site for t in node_types if t.site != main}))


def current_site() -> str | None:
    """The ``medray.io/site`` label of the node this process runs on (None outside a Ray worker)."""
    import ray

    if not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_labels().get(SITE_LABEL)


def require_site(site: str, path: str | Path | None = None) -> None:
    """Raise :class:`SiteAccessError` unless this process runs on a node of ``site``.

    ``path`` only names what was about to be read (a site-local path, never PHI) in the message.
    """
    here = current_site()
    if here != site:
        what = f" {path}" if path is not None else ""
        raise SiteAccessError(
            f"refusing to read site {site!r}'s data{what} on a node of site {here!r}: "
            f"run the reader with site_options({site!r}) so that Ray places it on that site"
        )


def site_options(site: str, **options: Any) -> dict[str, Any]:
    """Ray task/actor options pinning work to ``site`` with a hard label selector (never a fallback).

    ``options`` (``num_cpus``, ``name``…) are passed through; a ``fallback_strategy`` is refused.
    """
    if "fallback_strategy" in options or "label_selector" in options:
        raise MedrayError("site_options pins work to its site: it takes no label_selector or fallback_strategy")
    return {**options, "label_selector": {SITE_LABEL: site}}
