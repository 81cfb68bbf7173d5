"""The measured burst: a 10x emergency burst against the diagnosis service while a research run holds
the training GPUs, with and without the priority broker.

A workload of its own that drives the others as an operator does, importing none of them:
:mod:`~workloads.burst.harness` (the scenario, one measured phase, its metrics),
:mod:`~workloads.burst.report` (the table and the timeline figure) and :mod:`~workloads.burst.demo`
(the demo's stage ``40-burst``). ``benchmarks/burst.py`` runs both phases; see docs/elasticity.md.
"""
