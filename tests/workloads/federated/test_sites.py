"""Sites are a wall: site actors run on their site's nodes (Ray's records say so), and nothing reads
a site's storage anywhere else."""

from __future__ import annotations

import pytest

from medray.cluster.node_types import SITE_LABEL
from medray.cluster.sites import SiteAccessError, partner_sites, site_options
from medray.errors import MedrayError
from workloads.federated.local import LocalTraining, read_site_data
from workloads.federated.site import SiteNode


def test_cluster_yaml_has_two_partner_sites(node_types):
    assert partner_sites(node_types) == ("partner-a", "partner-b")


def test_site_options_pin_hard_and_refuse_a_fallback():
    assert site_options("partner-a", num_cpus=1) == {"num_cpus": 1, "label_selector": {SITE_LABEL: "partner-a"}}
    with pytest.raises(MedrayError, match="fallback"):
        site_options("partner-a", fallback_strategy=[{}])


def test_a_reader_off_its_site_fails_before_opening_a_file(ray_cluster, partner_sites):
    import ray

    root = partner_sites.roots["partner-a"]

    @ray.remote
    def read(site):
        try:
            read_site_data(site, root, LocalTraining())
        except SiteAccessError as e:
            return str(e)
        return "read"

    # partner-a's storage, read by a task on partner-b's node and on the main site: refused.
    assert "on a node of site 'partner-b'" in ray.get(read.options(**site_options("partner-b")).remote("partner-a"))
    assert "on a node of site 'main'" in ray.get(read.options(**site_options("main")).remote("partner-a"))
    # On its own site it reads.
    assert ray.get(read.options(**site_options("partner-a")).remote("partner-a")) == "read"
    # The driver is no site's reader either (it stands on the head, the main site).
    with pytest.raises(SiteAccessError):
        read_site_data("partner-a", root, LocalTraining())


def test_a_site_client_refuses_another_sites_storage(ray_cluster, partner_sites):
    import ray

    actor = ray.remote(SiteNode).options(**site_options("partner-a", num_cpus=0.25, max_restarts=0))
    node = actor.remote("partner-a", str(partner_sites.roots["partner-b"]), 2, LocalTraining())
    with pytest.raises(ray.exceptions.RayActorError, match="belongs to site 'partner-b'"):
        ray.get(node.describe.remote())
