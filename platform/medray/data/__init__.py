"""Data at rest: the Parquet volume shards every stage reads (:mod:`~medray.data.shards`) and the
synthetic cohort the demo, the notebooks and the tests generate (:mod:`~medray.data.cohort`, from the
phantom in :mod:`~medray.data.anatomy`, the fake patients in :mod:`~medray.data.people`, the series
written by :mod:`~medray.data.dicom_writer` and the EMR of :mod:`~medray.data.emr_tables`).
"""
