"""Results streamed to a real S3 server (SeaweedFS, signature-checked) while the Parquet file is written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from joiner.writing import ParquetSink
from tests.fixtures.seaweedfs import S3Server
from transformer.settings import ObjectStoreSettings
from transformer.storage.s3 import S3ResultSink, S3Store
from transformer.storage.streaming import PART_BYTES, StreamingUpload, _BytePipe

pytestmark = pytest.mark.integration


def _table(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"event": np.arange(rows, dtype=np.uint64), "MET_pt": rng.random(rows)})


def _write(sink: ParquetSink, tables: list[pa.Table]) -> int:
    for table in tables:
        sink.write(table)
    return sink.commit({"spec_hash": "test"})


@pytest.mark.parametrize("rows", [10, 1_500_000], ids=["one-put", "multipart"])
def test_streamed_object_equals_the_written_file(s3_server: S3Server, tmp_path: Path, rows: int) -> None:
    store = S3Store(s3_server.settings())
    stream = S3ResultSink(store, "req-stream").open_stream("f.root.parquet")
    tables = [_table(rows, 1), _table(rows, 2)]
    size = _write(ParquetSink(tmp_path / "out.parquet", tables[0].schema, observer=stream.write), tables)
    assert (size > 2 * PART_BYTES) == (rows > 1000)  # the large case really goes up in several parts
    assert stream.finish() == size
    stored = store.get_bytes("req-stream", "f.root.parquet")
    assert stored == (tmp_path / "out.parquet").read_bytes()
    assert store.list_names("req-stream") == ["f.root.parquet"]
    assert pq.read_table(pa.BufferReader(stored)).num_rows == 2 * rows


def test_a_redelivered_file_replaces_the_streamed_object(s3_server: S3Server, tmp_path: Path) -> None:
    store = S3Store(s3_server.settings())
    sink = S3ResultSink(store, "req-stream-again")
    for seed in (1, 2):
        stream = sink.open_stream("f.parquet")
        table = _table(700_000, seed)
        size = _write(ParquetSink(tmp_path / f"{seed}.parquet", table.schema, observer=stream.write), [table])
        assert stream.finish() == size
    assert store.list_names("req-stream-again") == ["f.parquet"]
    assert store.get_bytes("req-stream-again", "f.parquet") == (tmp_path / "2.parquet").read_bytes()


def test_a_failed_join_leaves_no_object(s3_server: S3Server, tmp_path: Path) -> None:
    store = S3Store(s3_server.settings())
    store.ensure_bucket("req-stream-fail")
    stream = S3ResultSink(store, "req-stream-fail").open_stream("f.parquet")
    table = _table(1_500_000, 3)
    sink = ParquetSink(tmp_path / "out.parquet", table.schema, observer=stream.write)
    sink.write(table)  # more than a part: a multipart upload is under way
    sink.abort()
    stream.abandon("the join failed")
    assert store.list_names("req-stream-fail") == []
    assert not list(tmp_path.iterdir())


def test_an_unreachable_store_means_upload_the_file(tmp_path: Path) -> None:
    dead = S3Store(ObjectStoreSettings(url="127.0.0.1:9", access_key=SecretStr("a"), secret_key=SecretStr("b")),
                   connect_timeout=0.2)
    stream = StreamingUpload(dead, "req-dead", "f.parquet")
    table = _table(1_500_000, 4)
    size = _write(ParquetSink(tmp_path / "out.parquet", table.schema, observer=stream.write), [table])
    assert size == os.path.getsize(tmp_path / "out.parquet")  # the local file is whole whatever the store does
    assert stream.finish() is None


def test_more_bytes_waiting_than_allowed_gives_up_streaming_without_blocking_the_writer(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = S3Store(s3_server.settings())
    # less than a part may wait: the store cannot keep up by construction
    stream = StreamingUpload(store, "req-stream-slow", "f.parquet", max_buffered=PART_BYTES // 2)
    table = _table(1_500_000, 5)
    _write(ParquetSink(tmp_path / "out.parquet", table.schema, observer=stream.write), [table])
    assert stream.finish() is None
    assert store.list_names("req-stream-slow") == []


def test_pipe_reads_whole_sizes_until_the_end() -> None:
    pipe = _BytePipe(limit=1 << 20)
    for block in (b"abc", b"defgh", b"", b"ij"):
        pipe.write(block)
    assert pipe.read(4) == b"abcd"
    assert pipe.read(3) == b"efg"
    pipe.close()
    assert pipe.read(10) == b"hij"
    assert pipe.read(10) == b""
