"""The shared result cache through real workers: real RabbitMQ, Celery-published tasks, SeaweedFS, the
real engine. A computed result enters as a reference to its object; a second request (another request id,
same spec and files) is served by server-side copies and promotes the entries to copies of their own, which
outlive the first request's bucket; a changed input file (same path) and a changed spec miss; writers
racing on one key leave one valid entry; a reference whose object is gone or rewritten is a miss."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from tests.fixtures.app_recorder import AppRecorder
from tests.fixtures.rabbitmq import AppPublisher, delete_queue
from tests.fixtures.seaweedfs import S3Server, free_port
from tests.worker_support import WorkerProcess, write_friend, write_nano_like, write_spec
from transformer.result_cache import (
    REFERENCE_SUFFIX,
    RESULTS_PREFIX,
    CacheKey,
    ResultCache,
    ResultCounts,
    result_key,
)
from transformer.storage.s3 import S3Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(s3: S3Server, allowed: Path, bucket: str) -> dict[str, str]:
    return {**s3.env(), "JOINER_ALLOWED_LOCATIONS": str(allowed) + "/", "JOINER_CACHE_BUCKET": bucket,
            "JOINER_BACKOFF_S": "0.2", "JOINER_REPORT_REQUEUE_DELAY_S": "0.3"}


@pytest.fixture
def new_request(rabbitmq_url: str) -> Iterator[Callable[[], str]]:
    """Makes fresh request ids; their queues are deleted afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(str(uuid.uuid4()))
        return made[-1]

    yield make
    for request_id in made:
        delete_queue(rabbitmq_url, f"transformer-{request_id}")


@pytest.fixture
def dataset(tmp_path: Path, data_dir: Path) -> tuple[list[Path], Path]:
    """Two real NanoAOD files (copied) and a spec joining a reordered friend of each."""
    (tmp_path / "in").mkdir()
    (tmp_path / "friends").mkdir()
    inputs = []
    for name in ("nano_dy.root", "nano_dimuon.root"):
        inputs.append(Path(shutil.copy(data_dir / name, tmp_path / "in" / name)))
        write_friend(inputs[-1], tmp_path / "friends" / ("sf_" + name), seed=7, reorder=True)
    spec = write_spec(tmp_path / "spec.json", [
        {"name": "sys", "files": [str(tmp_path / "friends" / "sf_*.root")], "columns": ["sf"], "how": "left"}
    ])
    return inputs, spec


def _results(store: S3Store, bucket: str, references: int, copies: int = 0) -> tuple[list[str], list[str]]:
    """The reference and copy entries of a cache bucket, once there are as many as expected (they are
    written after the report)."""
    deadline = time.monotonic() + 30
    while True:
        names = sorted(store.list_names(bucket, RESULTS_PREFIX))
        refs = [n for n in names if n.endswith(REFERENCE_SUFFIX)]
        held = [n for n in names if not n.endswith(REFERENCE_SUFFIX)]
        if (len(refs) >= references and len(held) >= copies) or time.monotonic() > deadline:
            return refs, held
        time.sleep(0.05)


def test_second_request_is_served_from_the_cache_and_changes_miss(
    tmp_path: Path, dataset: tuple[list[Path], Path], s3_server: S3Server, rabbitmq_url: str,
    new_request: Callable[[], str], app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    inputs, spec = dataset
    changed_spec = write_spec(tmp_path / "spec2.json", json.loads(spec.read_text())["friends"],
                              columns=["Muon_pt", "nMuon", "Jet_pt", "nJet"])
    cache_bucket = "cache-" + uuid.uuid4().hex[:12]
    env = _env(s3_server, tmp_path, cache_bucket)
    first, second, third = new_request(), new_request(), new_request()
    workers = [
        WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec_path, env=env,
                      log=tmp_path / f"w{i}.log", probe_port=free_port())
        for i, (request_id, spec_path) in enumerate(((first, spec), (second, spec), (third, changed_spec)))
    ]
    store = S3Store(s3_server.settings())
    try:
        for worker in workers:
            worker.wait_ready()
        for file_id, path in enumerate(inputs, start=1):
            app_publisher.send_file(first, file_id, [str(path)], app_recorder.endpoint(first))
        computed = {r["file-id"]: r for r in app_recorder.wait_for(first, 2, timeout_s=120)}
        assert {r["status"] for r in computed.values()} == {"success"}
        references, copies = _results(store, cache_bucket, 2)
        assert len(references) == 2 and copies == []  # no second copy of a result nobody asked for again

        # another request, same spec and files: copies, no joins
        for file_id, path in enumerate(inputs, start=1):
            app_publisher.send_file(second, file_id, [str(path)], app_recorder.endpoint(second))
        served = {r["file-id"]: r for r in app_recorder.wait_for(second, 2, timeout_s=120)}
        for file_id in (1, 2):
            before, after = computed[file_id], served[file_id]
            assert after["status"] == "success" and after["requestId"] == second
            for field in ("file-path", "s3-object-name", "total-events", "total-bytes"):
                assert after[field] == before[field], field
            name = after["s3-object-name"]
            data = store.get_bytes(second, name)
            assert data is not None and data == store.get_bytes(first, name)
            assert len(data) == after["total-bytes"]
        log = workers[1].log()
        assert log.count("result cache hit") == 2 and " joining " not in log
        metrics = workers[1].probe("/metrics").text
        assert 'servicex_joiner_result_cache_total{outcome="hit"} 2.0' in metrics
        assert "servicex_joiner_files_done_total 2.0" in metrics
        assert 'servicex_joiner_result_cache_total{outcome="miss"} 2.0' in workers[0].probe("/metrics").text

        # reused entries are promoted to copies of their own, which outlive the first request's bucket
        references, copies = _results(store, cache_bucket, 2, copies=2)
        assert len(copies) == 2 and {store.get_bytes(cache_bucket, c) for c in copies} == {
            store.get_bytes(first, r["s3-object-name"]) for r in computed.values()}
        for report in computed.values():
            store.remove(first, report["s3-object-name"])
        app_publisher.send_file(second, 4, [str(inputs[1])], app_recorder.endpoint(second))
        again = app_recorder.wait_for(second, 3, timeout_s=120)[-1]
        assert again["status"] == "success" and again["total-bytes"] == computed[2]["total-bytes"]
        assert workers[1].log().count("result cache hit") == 3

        # the same path with other content misses, and its result replaces the object
        write_nano_like(inputs[0], 50, seed=11, first_event=10_000, lzma=False)
        app_publisher.send_file(second, 3, [str(inputs[0])], app_recorder.endpoint(second))
        changed = app_recorder.wait_for(second, 4, timeout_s=120)[-1]
        assert changed["status"] == "success" and changed["total-events"] == 50
        assert "file_id=3 result cache miss" in workers[1].log()
        table = pq.read_table(io.BytesIO(store.get_bytes(second, changed["s3-object-name"]) or b""))
        assert table["event"].to_pylist() == list(range(10_000, 10_050))
        assert len(_results(store, cache_bucket, 3)[0]) == 3

        # another spec over an unchanged file misses
        app_publisher.send_file(third, 1, [str(inputs[1])], app_recorder.endpoint(third))
        other = app_recorder.wait_for(third, 1, timeout_s=120)[0]
        assert other["status"] == "success"
        assert "result cache miss" in workers[2].log() and "result cache hit" not in workers[2].log()
        columns = pq.read_table(io.BytesIO(store.get_bytes(third, other["s3-object-name"]) or b"")).column_names
        assert "Jet_pt" in columns
        assert len(_results(store, cache_bucket, 4)[0]) == 4
    finally:
        codes = [worker.terminate() for worker in workers]
    assert codes == [0, 0, 0]


def test_workers_racing_on_one_key_leave_one_valid_object(
    tmp_path: Path, dataset: tuple[list[Path], Path], s3_server: S3Server, rabbitmq_url: str,
    new_request: Callable[[], str], app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    inputs, spec = dataset
    cache_bucket = "cache-" + uuid.uuid4().hex[:12]
    env = _env(s3_server, tmp_path, cache_bucket)
    requests = [new_request(), new_request()]
    for request_id in requests:  # queued before the workers start, so both look up the key at once
        app_publisher.send_file(request_id, 1, [str(inputs[0])], app_recorder.endpoint(request_id))
    workers = [
        WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec, env=env,
                      log=tmp_path / f"race{i}.log", probe_port=free_port())
        for i, request_id in enumerate(requests)
    ]
    store = S3Store(s3_server.settings())
    try:
        reports = [app_recorder.wait_for(request_id, 1, timeout_s=120)[0] for request_id in requests]
        assert {r["status"] for r in reports} == {"success"}
        ((reference,), _) = _results(store, cache_bucket, 1)
        named = json.loads(store.get_bytes(cache_bucket, reference) or b"{}")
        outputs = {(r["requestId"], r["s3-object-name"]) for r in reports}
        assert (named["bucket"], named["name"]) in outputs  # the last writer's object: both are valid
        cached = store.get_bytes(named["bucket"], named["name"])
        assert cached is not None and len(cached) == named["size"]
        table = pq.read_table(io.BytesIO(cached))
        events = uproot.open(inputs[0])["Events"]["event"].array(library="np")
        assert np.array_equal(table["event"].to_numpy(), events)
        assert named["counts"]["out"] == len(events)

        # a later file of either request is served from that object, and the entry becomes a copy of it
        app_publisher.send_file(requests[0], 2, [str(inputs[0])], app_recorder.endpoint(requests[0]))
        later = app_recorder.wait_for(requests[0], 2, timeout_s=120)[-1]
        assert later["status"] == "success" and later["total-bytes"] == len(cached)
        assert "file_id=2 result cache hit" in workers[0].log()
        (_, (copy,)) = _results(store, cache_bucket, 1, copies=1)
        assert store.get_bytes(cache_bucket, copy) == cached
        info = store.stat(cache_bucket, copy)
        assert info is not None and ResultCounts.from_metadata(info.metadata["sxj-counts"]).events_out == len(events)
    finally:
        codes = [worker.terminate() for worker in workers]
    assert codes == [0, 0]


def _parquet_key(path: str) -> CacheKey:
    """A Parquet result's key for an input of that path (the other ingredients fixed)."""
    return result_key(spec_canonical="{}", input_identity={"path": path, "size": 1, "uuid": "u"}, role="primary",
                      fragments={}, models=[], output_format="parquet", parquet=True, engine_version="test")


def test_concurrent_publishers_of_one_key_leave_a_consistent_entry(s3_server: S3Server) -> None:
    store = S3Store(s3_server.settings())
    cache = ResultCache(store, "cache-" + uuid.uuid4().hex[:12])
    key = _parquet_key("/store/x.root")
    request = "req-" + uuid.uuid4().hex[:12]
    writers = 8
    for n in range(writers):  # each writer's result differs in size and counts
        store.put_bytes(request, f"out-{n}", bytes([n]) * (1000 + n))
    barrier = threading.Barrier(writers)
    outcomes: list[bool] = []

    def publish(n: int) -> None:
        barrier.wait()
        outcomes.append(cache.publish(key, request, f"out-{n}", ResultCounts(n, n, {"f": n}, {})))

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [True] * writers
    assert store.list_names(cache.bucket) == [key.reference_name]  # a reference: no copy of the bytes yet
    found = cache.lookup(key)
    assert found is not None and not found.promoted
    winner = found.counts.events_out  # the counts and the object come from the same writer
    assert (found.bucket, found.name, found.size) == (request, f"out-{winner}", 1000 + winner)
    assert found.counts.matched == {"f": winner}
    # a hit copies the object into another request's bucket, then promotes the entry to a copy of its own
    other = "req-" + uuid.uuid4().hex[:12]
    assert cache.deliver(found, other, "copy") == 1000 + winner
    assert cache.promote(found, other, "copy")
    promoted = cache.lookup(key)
    assert promoted is not None and promoted.promoted
    assert (promoted.bucket, promoted.counts) == (cache.bucket, found.counts)
    assert store.get_bytes(cache.bucket, key.object_name) == bytes([winner]) * (1000 + winner)
    assert not cache.promote(promoted, other, "copy")  # already the cache's own
    store.remove(cache.bucket, key.object_name)
    store.remove(cache.bucket, key.reference_name)
    assert cache.lookup(key) is None
    assert cache.deliver(promoted, request, "copy") is None  # vanished meanwhile: the caller computes


def test_a_reference_to_a_gone_or_rewritten_object_is_a_miss(s3_server: S3Server) -> None:
    store = S3Store(s3_server.settings())
    cache = ResultCache(store, "cache-" + uuid.uuid4().hex[:12])
    key = _parquet_key("/store/y.root")
    request, later = "req-" + uuid.uuid4().hex[:12], "req-" + uuid.uuid4().hex[:12]
    store.put_bytes(request, "out", b"a" * 500)
    assert cache.publish(key, request, "out", ResultCounts(5, 5))
    found = cache.lookup(key)
    assert found is not None
    assert cache.deliver(found, request, "out") == 500  # a redelivered file's own stored result: no copy

    # rewritten after the lookup (a redelivery, another input): the conditional copy refuses it
    store.put_bytes(request, "out", b"b" * 500)
    assert cache.deliver(found, later, "copy") is None
    assert store.stat(later, "copy") is None
    assert cache.lookup(key) is None  # the reference no longer matches its object's ETag

    # entered again, then the request's bucket is emptied (the App deleted the request)
    assert cache.publish(key, request, "out", ResultCounts(5, 5))
    assert cache.lookup(key) is not None
    store.remove(request, "out")
    assert cache.lookup(key) is None
    assert cache.publish(key, request, "out", ResultCounts(5, 5)) is False  # nothing stored to refer to

    # a reference of another key, or unreadable, is ignored
    store.put_bytes(cache.bucket, key.reference_name, b"{not json")
    assert cache.lookup(key) is None
