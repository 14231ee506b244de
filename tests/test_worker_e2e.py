"""The worker end to end: real RabbitMQ, tasks published by real Celery, real S3 (SeaweedFS), the real
engine, and a recorder of the App's file-complete endpoint. Good files, a corrupt file, an unsupported
format, a malformed message, a friend with duplicate keys, a friend outside the allowed locations."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot

from tests.fixtures.app_recorder import AppRecorder
from tests.fixtures.http_files import HttpFiles
from tests.fixtures.rabbitmq import AppPublisher
from tests.fixtures.seaweedfs import S3Server, free_port
from tests.worker_support import WorkerProcess, truncated_copy, write_friend, write_spec
from transformer.naming import object_name
from transformer.settings import ObjectStoreSettings
from transformer.storage.s3 import S3Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(s3: S3Server, allowed: str, **extra: str) -> dict[str, str]:
    return {
        **s3.env(), "JOINER_ALLOWED_LOCATIONS": allowed, "POD_NAME": "pod-a", "HOST_NAME": "node-a",
        "JOINER_BACKOFF_S": "0.2", "JOINER_REPORT_REQUEUE_DELAY_S": "0.3", "JOINER_FILE_DEADLINE_S": "120",
        **extra,
    }


@pytest.fixture
def inputs(tmp_path: Path, data_dir: Path) -> dict[str, Path]:
    """Two real NanoAOD files (copied), their reordered friends, and a corrupt file."""
    files: dict[str, Path] = {}
    (tmp_path / "in").mkdir()
    (tmp_path / "friends").mkdir()
    for name in ("nano_dy.root", "nano_dimuon.root"):
        files[name] = shutil.copy(data_dir / name, tmp_path / "in" / name)
        write_friend(files[name], tmp_path / "friends" / ("sf_" + name), seed=7, reorder=True)
    truncated_copy(data_dir / "nano_dy.root", tmp_path / "in" / "corrupt.root")
    files["corrupt.root"] = tmp_path / "in" / "corrupt.root"
    return files


def test_worker_end_to_end(
    tmp_path: Path, inputs: dict[str, Path], s3_server: S3Server, rabbitmq_url: str, request_id: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    spec = write_spec(tmp_path / "join_spec.json", [
        {"name": "sys", "files": [str(tmp_path / "friends" / "sf_*.root")], "columns": ["sf"], "how": "left"}
    ])
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec,
                           env=_env(s3_server, str(tmp_path) + "/"), log=tmp_path / "worker.log",
                           probe_port=free_port())
    try:
        worker.wait_ready()
        endpoint = app_recorder.endpoint(request_id)
        good = [inputs["nano_dy.root"], inputs["nano_dimuon.root"]]
        app_publisher.send_file(request_id, 1, [str(good[0])], endpoint)
        app_publisher.send_file(request_id, 2, [str(inputs["corrupt.root"])], endpoint)
        # a malformed message between tasks: rejected, logged with its delivery tag
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
        connection.channel().basic_publish("", f"transformer-{request_id}", b"\x00garbage",
                                           pika.BasicProperties(headers={"task": "transformer_sidecar.transform_file"},
                                                                content_type="application/json"))
        connection.close()
        # the first replica is missing: the second one is used and names the object
        app_publisher.send_file(request_id, 3, [str(tmp_path / "in" / "gone.root"), str(good[1])], endpoint)
        app_publisher.send_file(request_id, 4, [str(good[0])], endpoint, result_format="root-rntuple")
        reports = app_recorder.wait_for(request_id, 4, timeout_s=120)
        by_id = {r["file-id"]: r for r in reports}
        assert sorted(by_id) == [1, 2, 3, 4]

        store = S3Store(ObjectStoreSettings.model_validate(s3_server.settings().model_dump()))
        for file_id, path in ((1, good[0]), (3, good[1])):
            report = by_id[file_id]
            assert report["status"] == "success"
            assert report["file-path"] == str(path)
            assert report["s3-object-name"] == object_name(str(path), parquet=True)
            assert report["requestId"] == request_id
            assert report["place"] == {"host_name": "node-a", "site": "unknown", "pod": "pod-a"}
            data = store.get_bytes(request_id, report["s3-object-name"])
            assert data is not None and report["total-bytes"] == len(data)
            table = pq.read_table(io.BytesIO(data))
            primary = uproot.open(path)["Events"].arrays(["event", "nMuon"], library="np")
            assert report["total-events"] == table.num_rows == len(primary["event"])
            assert np.array_equal(table["event"].to_numpy(), primary["event"])
            assert np.array_equal(table["nMuon"].to_numpy(), primary["nMuon"])
            expected_sf = (primary["event"] % 1000).astype(np.float32) / 1000
            assert np.allclose(table["sf"].to_numpy(), expected_sf)
            assert table["sys_matched"].to_pylist() == [True] * table.num_rows
        assert sorted(store.list_names(request_id)) == sorted(
            [by_id[1]["s3-object-name"], by_id[3]["s3-object-name"]]
        )
        for file_id in (2, 4):
            assert by_id[file_id]["status"] == "failure"
            assert by_id[file_id]["s3-object-name"] == "none"
            assert by_id[file_id]["total-bytes"] == 0
        log = worker.log()
        assert f"file_id=2 FAILED (input) for {inputs['corrupt.root']}" in log
        assert "unsupported result_format 'root-rntuple'" in log
        assert "delivery_tag=" in log and "rejected without requeue: invalid task message" in log

        # one transform process, forked from the worker's zygote, served every file and loaded the friend's
        # key index once
        assert log.count("key index of 'sys' loaded") == 1
        assert log.count("transform process pid") == 1
        assert log.count("started from the zygote") == 1
        metrics = worker.probe("/metrics").text
        assert "servicex_joiner_transform_processes_started_total 1.0" in metrics
        assert "servicex_joiner_files_done_total 2.0" in metrics
        assert 'servicex_joiner_files_failed_total{reason="format"} 1.0' in metrics
        assert "servicex_joiner_invalid_messages_total 1.0" in metrics
        assert 'servicex_joiner_join_matched_total{friend="sys"}' in metrics
        assert worker.probe("/healthz").status_code == 200
        assert json.loads(worker.probe("/readyz").text)["ready"] is True
    finally:
        code = worker.terminate()
    assert code == 0, worker.log()
    assert "worker stopped" in worker.log()


def test_refused_joins_fail_every_file(
    tmp_path: Path, inputs: dict[str, Path], s3_server: S3Server, rabbitmq_url: str, request_id: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    dup = tmp_path / "friends" / "dup.root"
    write_friend(inputs["nano_dy.root"], dup, seed=1, reorder=True, duplicate=True)
    spec = write_spec(tmp_path / "join_spec.json", [
        {"name": "dup", "files": [str(dup)], "columns": ["sf"]},
    ])
    outside = write_spec(tmp_path / "outside_spec.json", [
        {"name": "far", "files": ["/etc/friends.root"], "columns": ["sf"]},
    ])
    endpoint = app_recorder.endpoint(request_id)
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec,
                           env=_env(s3_server, str(tmp_path) + "/"), log=tmp_path / "dup.log",
                           probe_port=free_port())
    try:
        worker.wait_ready()
        app_publisher.send_file(request_id, 1, [str(inputs["nano_dy.root"])], endpoint)
        app_publisher.send_file(request_id, 2, [str(inputs["nano_dimuon.root"])], endpoint)
        reports = app_recorder.wait_for(request_id, 2, timeout_s=60)
        assert {r["status"] for r in reports} == {"failure"}
        assert "duplicate event key" in worker.log()
    finally:
        assert worker.terminate() == 0
    other = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=outside,
                          env=_env(s3_server, str(tmp_path) + "/"), log=tmp_path / "outside.log",
                          probe_port=free_port())
    try:
        other.wait_ready()
        app_publisher.send_file(request_id, 3, [str(inputs["nano_dy.root"])], endpoint)
        reports = app_recorder.wait_for(request_id, 3, timeout_s=60)
        assert reports[-1]["status"] == "failure" and reports[-1]["file-id"] == 3
        assert "'/etc/friends.root' is not in an allowed location" in other.log()
    finally:
        assert other.terminate() == 0


def test_root_file_output(
    tmp_path: Path, inputs: dict[str, Path], s3_server: S3Server, rabbitmq_url: str, request_id: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    spec = write_spec(tmp_path / "join_spec.json", [
        {"name": "sys", "files": [str(tmp_path / "friends" / "sf_*.root")], "columns": ["sf"], "how": "left"}
    ])
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec,
                           env=_env(s3_server, str(tmp_path) + "/", JOINER_CHILD_MAX_FILES="1"),
                           log=tmp_path / "worker.log", probe_port=free_port())
    path = inputs["nano_dimuon.root"]
    try:
        endpoint = app_recorder.endpoint(request_id)
        app_publisher.send_file(request_id, 1, [str(path)], endpoint, result_format="root-file")
        app_publisher.send_file(request_id, 2, [str(path)], endpoint)  # the same file as Parquet: another object
        reports = {r["file-id"]: r for r in app_recorder.wait_for(request_id, 2, timeout_s=120)}
        # JOINER_CHILD_MAX_FILES=1: each file had a transform process of its own, each forked by the zygote
        assert worker.log().count("recycled after 1 files") == 2
        assert worker.log().count("started from the zygote") == 2
        assert "servicex_joiner_transform_processes_started_total 2.0" in worker.probe("/metrics").text
    finally:
        assert worker.terminate() == 0
    report = reports[1]
    assert report["status"] == "success", worker.log()
    assert report["s3-object-name"] == object_name(str(path), parquet=False)
    assert not report["s3-object-name"].endswith(".parquet")
    assert reports[2]["s3-object-name"] == object_name(str(path), parquet=True)
    store = S3Store(s3_server.settings())
    data = store.get_bytes(request_id, report["s3-object-name"])
    assert data is not None and len(data) == report["total-bytes"]
    local = tmp_path / "out.root"
    local.write_bytes(data)
    tree = uproot.open(local)["servicex"]
    primary = uproot.open(path)["Events"].arrays(["event", "nMuon"], library="np")
    assert report["total-events"] == tree.num_entries == len(primary["event"])
    assert np.array_equal(tree["event"].array(library="np"), primary["event"])
    assert np.allclose(tree["sf"].array(library="np"), (primary["event"] % 1000).astype(np.float32) / 1000)
    assert "Muon_pt" in tree


def test_friends_read_from_the_object_store(
    tmp_path: Path, inputs: dict[str, Path], s3_server: S3Server, rabbitmq_url: str, request_id: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    """Friends where a facility keeps them (the default allowed locations exclude local paths): a ROOT
    friend and a Parquet one (another request's output, say) in the object store, found by globs."""
    import pyarrow as pa

    store = S3Store(s3_server.settings())
    bucket = "friends-" + request_id[:8]
    store.ensure_bucket(bucket)
    path = inputs["nano_dy.root"]
    friend = tmp_path / "friends" / "sf_nano_dy.root"
    store.client.fput_object(bucket, "sys/sf_0.root", str(friend))
    keys = uproot.open(friend)["Events"].arrays(["run", "luminosityBlock", "event", "sf"], library="np")
    pq.write_table(pa.table({"run": keys["run"], "luminosityBlock": keys["luminosityBlock"], "event": keys["event"],
                             "pq_sf": keys["sf"] * 2}), tmp_path / "sf.parquet")
    store.client.fput_object(bucket, "previous/part-0.parquet", str(tmp_path / "sf.parquet"))
    spec = write_spec(tmp_path / "join_spec.json", [
        {"name": "sys", "files": [f"s3://{bucket}/sys/*.root"], "columns": ["sf"], "how": "left"},
        {"name": "prev", "files": [f"s3://{bucket}/previous/*.parquet"], "columns": ["pq_sf"], "how": "inner"},
    ])
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec, env=_env(s3_server, "s3://"),
                           log=tmp_path / "worker.log", probe_port=free_port())
    try:
        app_publisher.send_file(request_id, 1, [str(path)], app_recorder.endpoint(request_id))
        (report,) = app_recorder.wait_for(request_id, 1, timeout_s=120)
    finally:
        assert worker.terminate() == 0
    assert report["status"] == "success", worker.log()
    data = store.get_bytes(request_id, report["s3-object-name"])
    assert data is not None
    table = pq.read_table(io.BytesIO(data))
    primary = uproot.open(path)["Events"].arrays(["event"], library="np")["event"]
    assert np.array_equal(table["event"].to_numpy(), primary)
    expected = (primary % 1000).astype(np.float32) / 1000
    assert np.allclose(table["sf"].to_numpy(), expected)
    assert np.allclose(table["pq_sf"].to_numpy(), expected * 2)


def test_replicas_over_http_unreachable_ones_passed_over_and_retried_when_alone(
    tmp_path: Path, inputs: dict[str, Path], s3_server: S3Server, rabbitmq_url: str, request_id: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder, http_files: HttpFiles,
) -> None:
    """Replicas as ServiceX lists them (here http://, as an XCache serves them). One whose server refuses
    connections is not a broken file: the next replica is read (without the object store's options, which
    are for s3:// only); with no other replica the file is tried again with backoff, and only then reported
    as failed (transient)."""
    spec = write_spec(tmp_path / "join_spec.json", [])
    dead = f"http://127.0.0.1:{free_port()}/store/nano_dy.root"  # nothing listens there
    shutil.copy(inputs["nano_dy.root"], http_files.root / "nano_dy.root")
    served = http_files.url("nano_dy.root")
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec,
                           env=_env(s3_server, str(tmp_path) + "/", JOINER_TRANSIENT_ATTEMPTS="3"),
                           log=tmp_path / "worker.log", probe_port=free_port())
    try:
        endpoint = app_recorder.endpoint(request_id)
        app_publisher.send_file(request_id, 1, [dead, served], endpoint)
        app_publisher.send_file(request_id, 2, [dead], endpoint)
        reports = {r["file-id"]: r for r in app_recorder.wait_for(request_id, 2, timeout_s=120)}
    finally:
        assert worker.terminate() == 0
    assert reports[1]["status"] == "success", worker.log()
    assert reports[1]["file-path"] == served and reports[1]["s3-object-name"] == object_name(served, parquet=True)
    data = S3Store(s3_server.settings()).get_bytes(request_id, reports[1]["s3-object-name"])
    assert data is not None
    expected = uproot.open(inputs["nano_dy.root"])["Events"].arrays(["event"], library="np")["event"]
    assert np.array_equal(pq.read_table(io.BytesIO(data))["event"].to_numpy(), expected)
    assert reports[2]["status"] == "failure"
    log = worker.log()
    assert "file_id=2 the join failed (try 2/3)" in log and "SourceUnavailableError" in log
    assert "file_id=2 FAILED (transient)" in log
