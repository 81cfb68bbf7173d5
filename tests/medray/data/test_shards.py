"""medray.data.shards: the versioned volume shard schema shared by preprocessing and training."""

from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data

from medray.data.shards import (
    NUMERIC_COLUMNS,
    PATIENT_PSEUDONYM,
    SCHEMA_VERSION,
    VOLUME,
    ShardSchemaError,
    VolumeRecord,
    build_table,
    check_schema,
    read_volumes,
    shard_files,
    volume_schema,
    window_name,
    write_shard,
)
from medray.imaging.normalize import InputSpec
from medray.scheduling.options import ray_options
from medray.scheduling.placement import WorkloadProfile

SPEC = InputSpec(shape=(4, 8, 8), spacing_mm=(6, 6, 6), window="lung")


def record(i: int, spec: InputSpec = SPEC) -> VolumeRecord:
    rng = np.random.default_rng(i)
    return VolumeRecord(
        patient_pseudonym=f"{i:024x}", study_uid=f"2.25.{100 + i}", series_uid=f"2.25.{200 + i}",
        modality="CT", body_part="CHEST", study_date=date(2019, 1, 1 + i), n_instances=20 + i,
        source_shape=(20, 128, 128), source_spacing_mm=(5.0, 3.0, 3.0), spacing_mm=spec.spacing_mm,
        window=window_name(spec.window), volume=rng.random(spec.shape, dtype=np.float32),
        patient_sex="F", patient_age="90+", dicom_header='{"00080060":{"vr":"CS","Value":["CT"]}}')


def test_table_round_trips_through_parquet(tmp_path):
    records = [record(2), record(0), record(1)]
    write_shard(build_table(records, SPEC), tmp_path / "volumes" / "a.parquet")
    table = pq.read_table(tmp_path / "volumes" / "a.parquet")
    assert check_schema(table.schema) == SPEC
    assert table["series_uid"].to_pylist() == ["2.25.200", "2.25.201", "2.25.202"]  # sorted
    volumes = table[VOLUME].combine_chunks().to_numpy_ndarray()
    assert volumes.shape == (3, *SPEC.shape) and volumes.dtype == np.float32
    np.testing.assert_array_equal(volumes[1], record(1).volume)
    assert table["study_date"].to_pylist()[0] == date(2019, 1, 1)
    assert table["source_spacing_mm"].to_pylist()[0] == [5.0, 3.0, 3.0]


def test_writes_are_reproducible_and_leave_no_temporary_files(tmp_path):
    table = build_table([record(0), record(1)], SPEC)
    write_shard(table, tmp_path / "x.parquet")
    first = (tmp_path / "x.parquet").read_bytes()
    write_shard(build_table([record(1), record(0)], SPEC), tmp_path / "x.parquet")
    assert (tmp_path / "x.parquet").read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_volumes_are_byte_stream_split_and_other_columns_dictionary_encoded(tmp_path):
    write_shard(build_table([record(0), record(1)], SPEC), tmp_path / "x.parquet")
    meta = pq.ParquetFile(tmp_path / "x.parquet").metadata.row_group(0)
    chunks = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    volume = chunks[f"{VOLUME}.list.element"]
    assert "BYTE_STREAM_SPLIT" in volume.encodings and not volume.has_dictionary_page
    assert not volume.is_stats_set  # min/max of voxels help no reader
    series = chunks["series_uid"]
    assert series.has_dictionary_page and series.is_stats_set


def test_schema_check_refuses_other_versions_and_columns():
    schema = volume_schema(SPEC)
    with pytest.raises(ShardSchemaError, match="version 99"):
        check_schema(schema.with_metadata({**schema.metadata, b"medray.schema_version": b"99"}))
    with pytest.raises(ShardSchemaError, match="no schema version"):
        check_schema(schema.remove_metadata())
    with pytest.raises(ShardSchemaError, match=f"missing: \\['{PATIENT_PSEUDONYM}'\\]"):
        check_schema(schema.remove(0))
    with pytest.raises(ShardSchemaError, match="types or order"):
        check_schema(schema.set(schema.get_field_index("n_instances"), pa.field("n_instances", pa.int64())))
    with pytest.raises(ValueError, match="shape"):
        build_table([record(0, InputSpec(shape=(2, 8, 8)))], SPEC)
    assert SCHEMA_VERSION == 1


def test_window_names():
    assert [window_name(w) for w in ("lung", None, (-600.0, 1500.0))] == ["lung", "none", "-600/1500"]


def test_read_volumes_gives_numpy_and_torch_batches(tmp_path, ray_cluster):
    for i in range(3):
        write_shard(build_table([record(i)], SPEC), tmp_path / "volumes" / f"2.25.{200 + i}.parquet")
    assert len(shard_files(tmp_path)) == 3 == len(shard_files(tmp_path / "volumes"))
    # One read task, on a prep node like the pipeline's (warm workers, not one new one per node).
    prep = ray_options(WorkloadProfile(roles=("prep",)))
    before = ray.data.DataContext.get_current().use_datasource_v2
    ds = read_volumes(tmp_path, override_num_blocks=1, ray_remote_args=prep).materialize()
    assert ray.data.DataContext.get_current().use_datasource_v2 == before  # restored
    batch = next(iter(ds.iter_batches(batch_size=3, batch_format="numpy")))
    assert batch[VOLUME].shape == (3, *SPEC.shape) and batch[VOLUME].dtype == np.float32
    assert sorted(batch[PATIENT_PSEUDONYM].tolist()) == [f"{i:024x}" for i in range(3)]
    numeric = ds.select_columns(list(NUMERIC_COLUMNS))
    torch_batch = next(iter(numeric.iter_torch_batches(batch_size=2)))
    assert tuple(torch_batch[VOLUME].shape) == (2, *SPEC.shape)


def test_read_volumes_refuses_empty_and_mixed_folders(tmp_path, ray_cluster):
    with pytest.raises(ShardSchemaError, match="no volume shards"):
        read_volumes(tmp_path)
    other = InputSpec(shape=(4, 8, 8), spacing_mm=(3, 3, 3), window="lung")
    write_shard(build_table([record(0)], SPEC), tmp_path / "a.parquet")
    write_shard(build_table([record(1, other)], other), tmp_path / "b.parquet")
    with pytest.raises(ShardSchemaError, match="2 different input specs"):
        read_volumes(tmp_path)
