"""Data at rest: the Parquet volume shards every stage reads (:mod:`~medray.data.shards`) and the
synthetic cohort the demo, the notebooks and the tests generate (:mod:`~medray.data.cohort`).
"""
