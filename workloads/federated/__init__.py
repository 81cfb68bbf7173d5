"""Federated training across hospital sites: data stays at its site, updates are securely aggregated.

Modules, one concept each: ``config`` (a run's validated settings), ``privacy`` (the site operator's
DP policy, the site-side filter, the RDP accountant and budget), ``local`` (what a site does with its
own data: read, train a round, evaluate), ``site`` (the site's Flower client as a Ray actor pinned to
the site), ``grid`` (Flower's Grid over those actors) and ``run`` (the coordinator: SecAgg+ with
FedAvg/FedProx, evaluation, the registry). Entry point: ``python -m workloads.federated``
(docs/federated.md).
"""
