"""Research training on Ray Train and Ray Tune: from de-identified shards to a registered model.

Modules, one concept each: ``config`` (a run's validated settings), ``data`` (shards + diagnoses →
labelled, patient-split Ray Datasets), ``placement`` (training workers on ``train`` nodes),
``loop`` (what each worker runs: DDP, autocast, checkpoints), ``evaluate`` (held-out AUC),
``train`` (one run + registry; CLI), ``tune`` (ASHA search; CLI) and ``demo`` (the demo stage).
Entry points: ``python -m workloads.research.train`` and ``python -m workloads.research.tune``.
"""
