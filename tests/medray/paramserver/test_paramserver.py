"""Pure parts of the parameter servers: hash sharding, sparse Adagrad, routing by density (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medray.errors import ConfigError, PlacementError
from medray.paramserver import ShardMap, SparseAdagrad, TableSpec, initial_weight, measure_densities, parse_pins, route
from medray.paramserver.placement import server_options
from medray.paramserver.routing import density


def test_shards_cover_every_row_once_and_evenly():
    m = ShardMap.build(10_000, 3)
    assert sorted(np.concatenate([m.rows_of(s) for s in range(3)]).tolist()) == list(range(10_000))
    sizes = np.bincount(m.owner, minlength=3)
    assert sizes.min() > 0.9 * 10_000 / 3  # a hash, not a range split: clustered ids spread out
    assert np.bincount(m.owner[:300], minlength=3).min() > 60
    ids = np.array([5, 9_999, 0, 42])
    for s, (pos, local) in enumerate(m.split(ids)):
        assert (m.rows_of(s)[local] == ids[pos]).all()
    with pytest.raises(ConfigError):
        m.split(np.array([10_000]))


def test_sparse_adagrad_on_touched_rows_equals_torch_dense_adagrad():
    spec = TableSpec("t", rows=50, dim=4, seed=3)
    dense = torch.nn.Parameter(initial_weight(spec).clone())
    reference = torch.optim.Adagrad([dense], lr=0.1, eps=1e-10)
    weight, opt = initial_weight(spec).clone(), SparseAdagrad(lr=0.1)
    sum_sq = opt.state(weight)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        rows = torch.randperm(50, generator=gen)[:7]
        grad = torch.randn(7, 4, generator=gen)
        full = torch.zeros(50, 4)
        full[rows] = grad
        dense.grad = full
        reference.step()
        opt.apply(weight, sum_sq, rows, grad)
    torch.testing.assert_close(weight, dense.detach())
    assert torch.equal(initial_weight(spec), initial_weight(spec))  # every server starts from the same rows


def test_routing_sends_sparse_tables_to_servers_and_dense_groups_to_allreduce():
    table = torch.nn.EmbeddingBag(1000, 4, mode="mean")
    tower = torch.nn.Linear(4, 1)

    def step() -> torch.Tensor:
        return tower(table(torch.tensor([1, 2, 3, 500]), torch.tensor([0, 2]))).sum()

    densities = measure_densities({"codes": table.parameters(), "tower": tower.parameters()}, [step, step])
    assert densities["codes"] == pytest.approx(0.004) and densities["tower"] == 1.0
    routing = route(densities, threshold=0.1, row_sparse=["codes"])
    assert routing.parameter_server == ("codes",) and routing.allreduce == ("tower",)
    assert "codes: density 0.0040 -> ps" in routing.describe()
    pinned = route(densities, threshold=0.1, row_sparse=["codes"], pinned=parse_pins("codes=allreduce"))
    assert pinned.allreduce == ("codes", "tower") and "(pinned)" in pinned.describe()
    with pytest.raises(ConfigError, match="only embedding tables"):
        route(densities, threshold=0.1, row_sparse=["codes"], pinned={"tower": "ps"})
    with pytest.raises(ConfigError, match="GROUP="):
        parse_pins("codes=somewhere")
    assert density(torch.zeros(3, 2)) == 0.0 and density(None) == 0.0


def test_servers_go_to_cpu_nodes_with_memory(node_types):
    tables = [TableSpec("codes", rows=131_072, dim=64)]
    options = server_options(tables, 2, node_types=node_types)
    assert options["label_selector"]["medray.io/node-type"] in {t.name for t in node_types if t.role == "prep"}
    assert options["memory"] >= tables[0].nbytes * 2 / 2
    huge = [TableSpec("codes", rows=2_000_000_000, dim=64)]
    with pytest.raises(PlacementError, match="--ps-shards"):
        server_options(huge, 1, node_types=node_types)
