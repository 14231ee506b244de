"""Worker fault cases: killed mid-file with a second worker on the queue, the App refusing reports for a
while, a hung file past its deadline, and the broker closing the worker's connection."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.app_recorder import AppRecorder
from tests.fixtures.rabbitmq import AppPublisher
from tests.fixtures.seaweedfs import S3Server, free_port
from tests.worker_support import WorkerProcess, write_friend, write_nano_like, write_spec
from transformer.storage.s3 import S3Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(s3: S3Server, allowed: str, **extra: str) -> dict[str, str]:
    return {**s3.env(), "JOINER_ALLOWED_LOCATIONS": allowed, "JOINER_BACKOFF_S": "0.2",
            "JOINER_REPORT_REQUEUE_DELAY_S": "0.3", **extra}


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A generated NanoAOD-like file large enough to be killed in the middle of, and its friend."""
    folder = tmp_path_factory.mktemp("big")
    primary = folder / "big.root"
    write_nano_like(primary, 150_000, seed=5)
    friend = folder / "big_friend.root"
    write_friend(primary, friend, seed=6, reorder=True, lzma=False)
    return primary, friend


def test_sigkill_mid_file_then_restart(
    tmp_path: Path, big_input: tuple[Path, Path], data_dir: Path, s3_server: S3Server, rabbitmq_url: str,
    request_id: str, app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    primary, friend = big_input
    small = Path(shutil.copy(data_dir / "nano_dy.root", tmp_path / "nano_dy.root"))
    small_friend = tmp_path / "nano_dy_friend.root"
    write_friend(small, small_friend, seed=3, reorder=True)
    spec = write_spec(tmp_path / "spec.json", [
        {"name": "f", "files": [str(friend), str(small_friend)], "columns": ["sf"]}
    ], columns=["Jet_*", "nJet", "Muon_*", "nMuon", "genWeight"])
    env = _env(s3_server, "/")
    probe_ports = [free_port(), free_port()]
    workers = [
        WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec, env=env,
                      log=tmp_path / f"w{i}.log", probe_port=probe_ports[i])
        for i in range(2)
    ]
    try:
        for worker in workers:
            worker.wait_ready()
        endpoint = app_recorder.endpoint(request_id)
        app_publisher.send_file(request_id, 1, [str(primary)], endpoint)
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline:
            victim = next((w for w in workers if f"file_id=1 joining {primary}" in w.log()), None)
            time.sleep(0.02)
        assert victim is not None
        time.sleep(0.3)
        victim.kill()  # SIGKILL in the middle of the file; the other worker keeps the queue alive
        survivor = workers[1 - workers.index(victim)]
        index = workers.index(victim)
        workers[index] = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec, env=env,
                                       log=tmp_path / f"w{index}-restarted.log", probe_port=free_port())
        workers[index].wait_ready()
        app_publisher.send_file(request_id, 2, [str(small)], endpoint)
        reports = app_recorder.wait_for(request_id, 2, timeout_s=120)
        time.sleep(1.0)  # nothing more may come
        reports = app_recorder.reports(request_id)
        assert sorted(r["file-id"] for r in reports) == [1, 2]
        assert {r["status"] for r in reports} == {"success"}
        store = S3Store(s3_server.settings())
        names = store.list_names(request_id)
        assert sorted(names) == sorted(r["s3-object-name"] for r in reports)
        for report in reports:
            assert store.size(request_id, report["s3-object-name"]) == report["total-bytes"]
        big = next(r for r in reports if r["file-id"] == 1)
        assert big["total-events"] == 150_000
        assert "file_id=1" in survivor.log() or "file_id=1" in workers[index].log()
    finally:
        codes = [w.terminate() for w in workers]
    assert codes == [0, 0]


def test_report_refused_for_a_while_then_accepted(
    tmp_path: Path, data_dir: Path, s3_server: S3Server, rabbitmq_url: str, request_id: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    small = Path(shutil.copy(data_dir / "nano_dy.root", tmp_path / "nano_dy.root"))
    spec = write_spec(tmp_path / "spec.json", [])
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec,
                           env=_env(s3_server, "/"), log=tmp_path / "w.log", probe_port=free_port())
    try:
        worker.wait_ready()
        app_recorder.fail_for(4.0)
        app_publisher.send_file(request_id, 1, [str(small)], app_recorder.endpoint(request_id))
        reports = app_recorder.wait_for(request_id, 1, timeout_s=60)
        assert reports[0]["status"] == "success"
        assert app_recorder.refused >= 3
        log = worker.log()
        assert "report not accepted" in log and "requeueing" in log
        assert "retrying its earlier file-complete report" in log  # no second transform
        assert log.count("file_id=1 joining") == 1
        assert worker.probe("/readyz").status_code == 200
    finally:
        assert worker.terminate() == 0


def test_hung_file_fails_at_its_deadline(
    tmp_path: Path, data_dir: Path, s3_server: S3Server, rabbitmq_url: str, request_id: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    fifo = tmp_path / "hangs.root"
    subprocess.run(["mkfifo", str(fifo)], check=True)  # opening it for reading blocks forever
    small = Path(shutil.copy(data_dir / "nano_dy.root", tmp_path / "nano_dy.root"))
    spec = write_spec(tmp_path / "spec.json", [])
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec,
                           env=_env(s3_server, "/", JOINER_FILE_DEADLINE_S="2"), log=tmp_path / "w.log",
                           probe_port=free_port())
    try:
        worker.wait_ready()
        app_publisher.send_file(request_id, 1, [str(fifo)], app_recorder.endpoint(request_id))
        app_publisher.send_file(request_id, 2, [str(small)], app_recorder.endpoint(request_id))
        reports = app_recorder.wait_for(request_id, 2, timeout_s=60)
        assert [r["status"] for r in reports] == ["failure", "success"]
        assert "per-file deadline of 2 s" in worker.log()
        # the hung process was killed; a fresh one served the next file
        assert "servicex_joiner_transform_processes_started_total 2.0" in worker.probe("/metrics").text
        assert worker.probe("/healthz").status_code == 200
    finally:
        assert worker.terminate() == 0


def test_transform_process_killed_mid_file_is_retried_in_a_fresh_one(
    tmp_path: Path, big_input: tuple[Path, Path], s3_server: S3Server, rabbitmq_url: str, request_id: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    primary, friend = big_input
    spec = write_spec(tmp_path / "spec.json", [{"name": "f", "files": [str(friend)], "columns": ["sf"]}],
                      columns=["Jet_*", "nJet", "Muon_*", "nMuon", "genWeight"])
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec, env=_env(s3_server, "/"),
                           log=tmp_path / "w.log", probe_port=free_port())
    try:
        worker.wait_ready()
        app_publisher.send_file(request_id, 1, [str(primary)], app_recorder.endpoint(request_id))
        worker.wait_log(f"file_id=1 joining {primary}")
        pid = int(re.findall(r"transform process pid (\d+) started", worker.log())[-1])
        os.kill(pid, signal.SIGKILL)  # the out-of-memory killer, in the middle of the file
        report = app_recorder.wait_for(request_id, 1, timeout_s=120)[0]
        assert report["status"] == "success" and report["total-events"] == 150_000
        log = worker.log()
        assert "was killed by SIGKILL (killed: out of memory?) (try 1/2)" in log
        assert "servicex_joiner_transform_processes_started_total 2.0" in worker.probe("/metrics").text
        assert worker.probe("/readyz").status_code == 200
    finally:
        assert worker.terminate() == 0


def test_reconnects_when_the_broker_drops_the_connection(
    tmp_path: Path, data_dir: Path, s3_server: S3Server, rabbitmq_url: str, request_id: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder,
) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not available")
    small = Path(shutil.copy(data_dir / "nano_dy.root", tmp_path / "nano_dy.root"))
    spec = write_spec(tmp_path / "spec.json", [])
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbitmq_url, spec=spec,
                           env=_env(s3_server, "/"), log=tmp_path / "w.log", probe_port=free_port())
    try:
        worker.wait_ready()
        listing = subprocess.run(
            ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
        names = [line.split("\t")[0] for line in listing.splitlines() if f"transformer-{request_id}" in line]
        assert len(names) == 1, listing
        subprocess.run(["rabbitmqctl", "-q", "close_connection", names[0], "test: broker restart"],
                       check=True, capture_output=True, timeout=60)
        worker.wait_log("retry 1/", timeout_s=30)
        worker.wait_ready(timeout_s=30)
        app_publisher.send_file(request_id, 1, [str(small)], app_recorder.endpoint(request_id))
        assert app_recorder.wait_for(request_id, 1, timeout_s=60)[0]["status"] == "success"
    finally:
        assert worker.terminate() == 0
