"""Fault injection with real processes: RabbitMQ, an S3 server, Triton and `servicex-joiner worker`.

Every case ends with the same check (`tests.reliability_support.check_request`): each input file has
exactly one file-complete report and, for a success, exactly one object whose rows pair each event with
its own friend (and inference) values; the request's bucket holds nothing else. Each case is recorded
through the `reliability` fixture, and the run renders the table of RELIABILITY.md.

Broker restarts: the App declares each request's queue non-durable and auto-delete, so a restarted broker
has lost the queue and every task still in it. The invariant then holds only if the publisher sends the
tasks of files without a report again once the broker is back (what a ServiceX App would have to do; it
does not today, ServiceX issue #893); the worker's part, checked here, is to reconnect, declare the queue
again, consume, and neither transform nor report a second time a file it already reported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.app_recorder import AppRecorder
from tests.fixtures.private_rabbitmq import PrivateRabbit
from tests.fixtures.private_seaweedfs import PrivateS3
from tests.fixtures.rabbitmq import TASK_NAME, AppPublisher, delete_queue
from tests.fixtures.reliability import CaseRecorder
from tests.fixtures.seaweedfs import S3Server, free_port
from tests.fixtures.triton import TEST_MODELS, TritonServer
from tests.reliability_support import (
    KEYS,
    Expect,
    check_request,
    make_friends,
    make_primaries,
    publish_raw,
    queue_state,
    read_keys,
    rewrite_primary,
    swap_friend_keys_in_place,
    transform_pids,
    wait_for,
    write_plain_friend,
    write_spec_file,
)
from tests.worker_support import WorkerProcess, truncated_copy
from transformer.models import queue_name
from transformer.storage.s3 import S3Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL_EVENTS = 20_000
BIG_EVENTS = 150_000  # large enough to be killed in the middle of
KILL_BULLET = "worker or transform killed"
BROKER_BULLET = "RabbitMQ restarted"
S3_BULLET = "S3 stopped 20 s"
APP_BULLET = "App returns 500"
TRITON_BULLET = "Triton stopped"
INPUT_BULLET = "bad input files"
MESSAGE_BULLET = "bad messages and specs"


def worker_env(s3: S3Server, request_id: str, **extra: str) -> dict[str, str]:
    """Short back-offs, a cache bucket of the test's own (no result-cache hits from other tests)."""
    return {
        **s3.env(), "JOINER_ALLOWED_LOCATIONS": "/", "JOINER_BACKOFF_S": "0.2",
        "JOINER_REPORT_REQUEUE_DELAY_S": "0.3", "JOINER_CACHE_BUCKET": f"sxj-cache-{request_id[:8]}",
        "JOINER_FILE_DEADLINE_S": "120", **extra,
    }  # fmt: skip


def start_worker(
    tmp_path: Path, request_id: str, rabbit_url: str, spec: Path, env: Mapping[str, str], name: str = "w"
) -> WorkerProcess:
    """A worker process, ready (consuming)."""
    worker = WorkerProcess(request_id=request_id, rabbit_url=rabbit_url, spec=spec, env=env,
                           log=tmp_path / f"{name}.log", probe_port=free_port())
    worker.wait_ready()
    return worker


def settle(recorder: AppRecorder, request_id: str, count: int, timeout_s: float) -> list[dict[str, object]]:
    """Wait for `count` reports, then a little longer: nothing more may come."""
    recorder.wait_for(request_id, count, timeout_s=timeout_s)
    time.sleep(1.5)
    return recorder.reports(request_id)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """Six small primaries and their reordered friends (shared, read-only)."""
    folder = tmp_path_factory.mktemp("reliability-data")
    primaries = make_primaries(folder / "nano", 6, SMALL_EVENTS, seed=11)
    return primaries, make_friends(primaries, folder / "friends", seed=12)


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """Three large primaries (slow enough to kill mid-file) and their friends."""
    folder = tmp_path_factory.mktemp("reliability-big")
    primaries = make_primaries(folder / "nano", 3, BIG_EVENTS, seed=21, first_file=10)
    return primaries, make_friends(primaries, folder / "friends", seed=22)


@pytest.fixture
def rid(rabbitmq_url: str) -> Iterator[str]:
    """A request id whose queue on the shared broker is removed afterwards."""
    value = str(uuid.uuid4())
    yield value
    delete_queue(rabbitmq_url, queue_name(value))


# ---------------------------------------------------------------------------------------------------------
# Killed processes


def test_worker_sigkilled_mid_file_is_redelivered_to_the_other(
    tmp_path: Path, big_dataset: tuple[list[Path], list[Path]], dataset: tuple[list[Path], list[Path]],
    s3_server: S3Server, rabbitmq_url: str, rid: str, app_publisher: AppPublisher, app_recorder: AppRecorder,
    reliability: CaseRecorder,
) -> None:
    case = reliability.case(
        "kill-worker", bullet=KILL_BULLET, fault="one of two workers SIGKILLed mid-file, then restarted",
        expectation="its file is redelivered to the other worker; one object, one report per file",
    )
    big, big_friends = big_dataset
    small, small_friends = dataset
    spec = write_spec_file(tmp_path / "spec.json", [big_friends[0], *small_friends[:2]])
    files = {1: big[0], 2: small[0], 3: small[1]}
    env = worker_env(s3_server, rid)
    workers = [start_worker(tmp_path, rid, rabbitmq_url, spec, env, f"w{i}") for i in range(2)]
    try:
        endpoint = app_recorder.endpoint(rid)
        app_publisher.send_file(rid, 1, [str(files[1])], endpoint)
        victim = wait_for(lambda: next((w for w in workers if "file_id=1 joining" in w.log()), None), 60,
                          "file 1 being joined")
        time.sleep(0.1)
        assert app_recorder.reports(rid) == [], "file 1 finished before the kill: make it bigger"
        victim.kill()
        killed_at = time.monotonic()
        index = workers.index(victim)
        survivor = workers[1 - index]
        workers[index] = start_worker(tmp_path, rid, rabbitmq_url, spec, env, f"w{index}-restarted")
        for file_id in (2, 3):
            app_publisher.send_file(rid, file_id, [str(files[file_id])], endpoint)
        reports = settle(app_recorder, rid, 3, 180)
        verdict = check_request(S3Store(s3_server.settings()), rid, reports, {k: Expect(p) for k, p in files.items()})
        redone = next(w for w in (survivor, workers[index]) if "file_id=1 task" in w.log())
        how = "a result-cache hit of the victim's finished join" if "file_id=1 result cache hit" in redone.log() \
            else "a new join"
        case.observe(f"file 1 redelivered to {'the survivor' if redone is survivor else 'the restarted worker'}, "
                     f"done by {how}; {verdict.summary()}")
        case.note(f"file 1 reported {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        codes = [w.terminate() for w in workers]
    assert codes == [0, 0]


def test_transform_crashes_and_hangs_keep_the_consumer(
    tmp_path: Path, big_dataset: tuple[list[Path], list[Path]], dataset: tuple[list[Path], list[Path]],
    s3_server: S3Server, rabbitmq_url: str, rid: str, app_publisher: AppPublisher, app_recorder: AppRecorder,
    reliability: CaseRecorder,
) -> None:
    """One worker only: the queue is auto-delete, so its consumer must survive whatever a file does."""
    cases = {
        "oom": reliability.case(
            "transform-oom", bullet=KILL_BULLET,
            fault="transform process SIGKILLed mid-file once (as the OOM killer does), one worker only",
            expectation="retried in a fresh process: success; consumer never leaves the queue",
        ),
        "segv": reliability.case(
            "transform-segv", bullet=KILL_BULLET, fault="transform process gets SIGSEGV mid-file (library crash)",
            expectation="retried in a fresh process: success; consumer never leaves the queue",
        ),
        "always": reliability.case(
            "transform-crash-always", bullet=KILL_BULLET, fault="transform process killed on every try",
            expectation="failure report after JOINER_CRASH_ATTEMPTS tries, no object; consumer stays",
        ),
        "hang": reliability.case(
            "transform-hang", bullet=KILL_BULLET, fault="read hangs forever (a FIFO as input)",
            expectation="failure report at the per-file deadline, no object; consumer stays",
        ),
    }
    big, big_friends = big_dataset
    small, small_friends = dataset
    spec = write_spec_file(tmp_path / "spec.json", [*big_friends, small_friends[0]])
    fifo = tmp_path / "hangs.root"
    subprocess.run(["mkfifo", str(fifo)], check=True)
    deadline_s = 25
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec,
                          worker_env(s3_server, rid, JOINER_FILE_DEADLINE_S=str(deadline_s)))
    queue = queue_name(rid)
    consumers: list[int] = []
    stop = threading.Event()

    def watch_queue() -> None:
        while not stop.is_set():
            state = queue_state(rabbitmq_url, queue)
            consumers.append(-1 if state is None else state[1])
            stop.wait(0.1)

    watcher = threading.Thread(target=watch_queue, daemon=True)
    watcher.start()
    endpoint = app_recorder.endpoint(rid)
    try:
        def kill_transform(file_id: int, signal_name: str, attempt: int) -> None:
            wait_for(lambda: worker.log().count(f"file_id={file_id} joining") >= attempt, 60,
                     f"file {file_id} try {attempt}")
            # kill at once: the transform process has just started this file (a warm one needs well under
            # a second for these files, so any wait risks finding it idle or on the next file)
            pids = transform_pids(worker.process.pid)
            assert len(pids) == 1, f"transform processes: {pids}"
            subprocess.run(["kill", f"-{signal_name}", str(pids[0])], check=True)

        app_publisher.send_file(rid, 1, [str(big[0])], endpoint)
        kill_transform(1, "KILL", 1)
        app_recorder.wait_for(rid, 1, timeout_s=120)
        app_publisher.send_file(rid, 2, [str(big[1])], endpoint)
        kill_transform(2, "SEGV", 1)
        app_recorder.wait_for(rid, 2, timeout_s=120)
        app_publisher.send_file(rid, 3, [str(big[2])], endpoint)
        kill_transform(3, "KILL", 1)
        kill_transform(3, "KILL", 2)
        app_recorder.wait_for(rid, 3, timeout_s=120)
        hang_sent = time.monotonic()
        app_publisher.send_file(rid, 4, [str(fifo)], endpoint)
        app_recorder.wait_for(rid, 4, timeout_s=deadline_s + 60)
        hang_seconds = time.monotonic() - hang_sent
        app_publisher.send_file(rid, 5, [str(small[0])], endpoint)
        reports = settle(app_recorder, rid, 5, 120)
        stop.set()
        watcher.join()
        expected = {
            1: Expect(big[0]), 2: Expect(big[1]), 3: Expect(big[2], "failure"), 4: Expect(fifo, "failure"),
            5: Expect(small[0]),
        }
        verdict = check_request(S3Store(s3_server.settings()), rid, reports, expected)
        log = worker.log()
        assert "was killed by SIGKILL" in log and "was killed by SIGSEGV" in log, log[-3000:]
        assert f"per-file deadline of {deadline_s} s" in log
        assert min(consumers) >= 1, f"the queue lost its consumer: {sorted(set(consumers))}"
        assert worker.probe("/healthz").status_code == 200
        watched = f"queue polled {len(consumers)}x: consumers >= 1 throughout"
        cases["oom"].observe(f"'killed by SIGKILL' logged, retried, success with verified content; {watched}")
        cases["segv"].observe(f"'killed by SIGSEGV' logged, retried, success with verified content; {watched}")
        cases["always"].observe("failure report after 2 tries, no object; the worker served the next files")
        cases["hang"].observe(f"failure report {hang_seconds:.0f} s after sending (deadline {deadline_s} s), no "
                              "object; next file succeeded")
        for case in cases.values():
            case.note(f"whole request: {verdict.summary()}")
    finally:
        stop.set()
        assert worker.terminate() == 0


# ---------------------------------------------------------------------------------------------------------
# Services going away


def test_rabbitmq_restarted_during_a_run(
    tmp_path: Path, dataset: tuple[list[Path], list[Path]], s3_server: S3Server, private_rabbitmq: PrivateRabbit,
    app_recorder: AppRecorder, reliability: CaseRecorder,
) -> None:
    case = reliability.case(
        "broker-restart", bullet=BROKER_BULLET,
        fault="rabbitmqctl stop_app / start_app (private node) while files are in progress",
        expectation="the worker reconnects and consumes again; the publisher re-sends tasks without a report "
        "(the auto-delete queue was dropped); one object and one report per file",
    )
    primaries, friends = dataset
    rid = str(uuid.uuid4())
    spec = write_spec_file(tmp_path / "spec.json", friends)
    worker = start_worker(tmp_path, rid, private_rabbitmq.url, spec, worker_env(s3_server, rid))
    endpoint = app_recorder.endpoint(rid)
    files = dict(enumerate(primaries, start=1))
    publisher = AppPublisher(private_rabbitmq.url)
    try:
        for file_id, path in files.items():
            publisher.send_file(rid, file_id, [str(path)], endpoint)
        app_recorder.wait_for(rid, 1, timeout_s=120)
        publisher.close()
        before = {int(r["file-id"]) for r in app_recorder.reports(rid)}
        private_rabbitmq.stop_app()
        stopped = time.monotonic()
        time.sleep(3.0)
        private_rabbitmq.start_app()
        down_s = time.monotonic() - stopped
        wait_for(lambda: (queue_state(private_rabbitmq.url, queue_name(rid)) or (0, 0))[1] >= 1, 90,
                 "the worker consuming again")
        back_s = time.monotonic() - stopped
        missing = sorted(set(files) - {int(r["file-id"]) for r in app_recorder.reports(rid)})
        publisher = AppPublisher(private_rabbitmq.url)
        for file_id in missing:
            publisher.send_file(rid, file_id, [str(files[file_id])], endpoint)
        reports = settle(app_recorder, rid, len(files), 180)
        verdict = check_request(S3Store(s3_server.settings()), rid, reports, {k: Expect(p) for k, p in files.items()})
        log = worker.log()
        assert "broker connection lost" in log or "connection lost" in log, log[-3000:]
        case.observe(f"worker consuming again {back_s:.1f} s after stop_app (broker down {down_s:.1f} s); "
                     f"{len(missing)} task(s) re-sent; {verdict.summary()}")
        case.note(f"{len(before)} file(s) reported before the restart")
    finally:
        publisher.close()
        assert worker.terminate() == 0


def test_s3_stopped_for_20_seconds_during_uploads(
    tmp_path: Path, dataset: tuple[list[Path], list[Path]], private_s3: PrivateS3, rabbitmq_url: str, rid: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder, reliability: CaseRecorder,
) -> None:
    case = reliability.case(
        "s3-outage", bullet=S3_BULLET, fault="S3 server SIGTERMed mid-run, started again 20 s later (same port, "
        "same data)", expectation="transient errors retried with backoff (window > 20 s): every file succeeds "
        "once, one object each, nothing else",
    )
    primaries, friends = dataset
    spec = write_spec_file(tmp_path / "spec.json", friends)
    env = worker_env(private_s3.server, rid, JOINER_TRANSIENT_ATTEMPTS="8", JOINER_BACKOFF_S="1",
                     JOINER_BACKOFF_MAX_S="8")
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec, env)
    endpoint = app_recorder.endpoint(rid)
    files = dict(enumerate(primaries, start=1))
    try:
        for file_id, path in files.items():
            app_publisher.send_file(rid, file_id, [str(path)], endpoint)
        app_recorder.wait_for(rid, 1, timeout_s=120)
        private_s3.stop()
        during = len(app_recorder.reports(rid))
        time.sleep(20.0)
        reported_while_down = len(app_recorder.reports(rid)) - during
        private_s3.start()
        reports = settle(app_recorder, rid, len(files), 180)
        verdict = check_request(S3Store(private_s3.server.settings()), rid, reports,
                                {k: Expect(p) for k, p in files.items()})
        log = worker.log()
        retries = log.count("transient failure") + log.count("failed (try")
        assert retries >= 1, log[-3000:]
        case.observe(f"{retries} retried storage error(s) logged, {reported_while_down} report(s) while down; "
                     f"{verdict.summary()}")
    finally:
        assert worker.terminate() == 0


def test_friends_in_a_stopped_object_store_are_waited_for(
    tmp_path: Path, dataset: tuple[list[Path], list[Path]], private_s3: PrivateS3, rabbitmq_url: str, rid: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder, reliability: CaseRecorder,
) -> None:
    case = reliability.case(
        "s3-friends-unreachable", bullet=S3_BULLET, fault="friends read from the object store (s3:// glob), "
        "the store stopped before the first file and started again 15 s later",
        expectation="an unreachable friend is a transient error: retried with backoff, then every file "
        "succeeds once; none is failed for the outage",
    )
    primaries, friends = dataset
    store = S3Store(private_s3.server.settings())
    bucket = f"friends-{rid[:8]}"
    store.ensure_bucket(bucket)
    for friend in friends:
        store.client.fput_object(bucket, f"sys/{friend.name}", str(friend))
    spec = write_spec_file(tmp_path / "spec.json", [f"s3://{bucket}/sys/*.root"])
    env = worker_env(private_s3.server, rid, JOINER_TRANSIENT_ATTEMPTS="8", JOINER_BACKOFF_S="1",
                     JOINER_BACKOFF_MAX_S="8", JOINER_ALLOWED_LOCATIONS="s3://")
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec, env)
    endpoint = app_recorder.endpoint(rid)
    files = dict(enumerate(primaries[:3], start=1))
    try:
        private_s3.stop()
        for file_id, path in files.items():
            app_publisher.send_file(rid, file_id, [str(path)], endpoint)
        time.sleep(15.0)
        reported_while_down = len(app_recorder.reports(rid))
        private_s3.start()
        reports = settle(app_recorder, rid, len(files), 180)
        verdict = check_request(S3Store(private_s3.server.settings()), rid, reports,
                                {k: Expect(p) for k, p in files.items()})
        log = worker.log()
        retries = log.count("failed (try")
        assert retries >= 1 and "SourceUnavailableError" in log, log[-3000:]
        assert reported_while_down == 0
        case.observe(f"{retries} retried read(s) of the unreachable store logged, {reported_while_down} report(s) "
                     f"while down; {verdict.summary()}")
    finally:
        assert worker.terminate() == 0


def test_app_answers_500_for_a_while(
    tmp_path: Path, dataset: tuple[list[Path], list[Path]], s3_server: S3Server, rabbitmq_url: str, rid: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder, reliability: CaseRecorder,
) -> None:
    case = reliability.case(
        "app-500", bullet=APP_BULLET, fault="file-complete answered HTTP 500 for 5 s",
        expectation="report retried, then the delivery requeued without a second transform; one report "
        "accepted per file, one object",
    )
    primaries, friends = dataset
    spec = write_spec_file(tmp_path / "spec.json", friends)
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec, worker_env(s3_server, rid))
    files = dict(enumerate(primaries[:3], start=1))
    try:
        app_recorder.fail_for(5.0)
        for file_id, path in files.items():
            app_publisher.send_file(rid, file_id, [str(path)], app_recorder.endpoint(rid))
        reports = settle(app_recorder, rid, len(files), 120)
        verdict = check_request(S3Store(s3_server.settings()), rid, reports, {k: Expect(p) for k, p in files.items()})
        log = worker.log()
        joins = {k: log.count(f"file_id={k} joining") for k in files}
        assert app_recorder.refused >= 1
        assert set(joins.values()) == {1}, f"a file was transformed again: {joins}"
        case.observe(f"{app_recorder.refused} PUT(s) refused; each file joined once; {verdict.summary()}")
    finally:
        assert worker.terminate() == 0


def test_triton_stopped_during_a_run(
    tmp_path: Path, dataset: tuple[list[Path], list[Path]], s3_server: S3Server, rabbitmq_url: str, rid: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder, triton_factory: object, reliability: CaseRecorder,
) -> None:
    case = reliability.case(
        "triton-down", bullet=TRITON_BULLET, fault="Triton SIGKILLed mid-run, restarted 8 s later",
        expectation="files wait for the server and succeed with the right inference columns, or fail with a "
        "reason naming Triton; no dead worker, never a wrong column",
    )
    server: TritonServer = triton_factory(repositories=(TEST_MODELS,))  # type: ignore[operator]
    primaries, friends = dataset
    spec = write_spec_file(tmp_path / "spec.json", friends, inference=True)
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec, worker_env(s3_server, rid, TRITON_URL=server.grpc_url))
    endpoint = app_recorder.endpoint(rid)
    files = dict(enumerate(primaries, start=1))
    try:
        for file_id, path in files.items():
            app_publisher.send_file(rid, file_id, [str(path)], endpoint)
        app_recorder.wait_for(rid, 1, timeout_s=120)
        server.kill()
        time.sleep(8.0)
        server.restart()
        server.wait_ready()
        reports = settle(app_recorder, rid, len(files), 240)
        expected = {k: Expect(p, "either", inference=True) for k, p in files.items()}
        verdict = check_request(S3Store(s3_server.settings()), rid, reports, expected)
        log = worker.log()
        if verdict.failures:
            assert "Triton" in log, log[-3000:]
        assert worker.process.poll() is None
        assert worker.probe("/healthz").status_code == 200
        app_publisher.send_file(rid, 99, [str(primaries[0])], endpoint)
        after = app_recorder.wait_for(rid, len(files) + 1, timeout_s=120)
        assert [r["status"] for r in after if r["file-id"] == 99] == ["success"]
        waits = log.count("waiting for") + log.count("retry")
        case.observe(f"{verdict.summary()}; a file sent afterwards succeeded; worker healthy")
        case.note(f"{waits} wait/retry line(s) logged while the server was away")
    finally:
        assert worker.terminate() == 0


# ---------------------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_input_files(
    tmp_path: Path, dataset: tuple[list[Path], list[Path]], s3_server: S3Server, rabbitmq_url: str, rid: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder, reliability: CaseRecorder,
) -> None:
    cases = {
        "truncated": reliability.case("input-truncated", bullet=INPUT_BULLET, fault="ROOT file cut at 10 %",
                                      expectation="failure report, no object"),
        "garbage": reliability.case("input-garbage", bullet=INPUT_BULLET, fault="corrupt file (not ROOT)",
                                    expectation="failure report, no object"),
        "empty": reliability.case("input-empty-tree", bullet=INPUT_BULLET, fault="tree with zero entries",
                                  expectation="success with zero rows and the full schema"),
        "nokey": reliability.case("input-missing-key", bullet=INPUT_BULLET, fault="key branch missing",
                                  expectation="failure report naming the branch, no object"),
        "dup": reliability.case("input-duplicate-keys", bullet=INPUT_BULLET, fault="duplicate keys in the primary",
                                expectation="failure report naming the keys, no object"),
    }
    primaries, friends = dataset
    good = primaries[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    truncated_copy(good, bad / "truncated.root", 0.1)  # cuts the baskets of the requested branches
    (bad / "garbage.root").write_bytes(b"root\x00\x00\xf4\x42" + bytes(range(256)) * 400)
    rewrite_primary(good, bad / "empty.root", lambda c: {k: v[:0] for k, v in c.items()})
    rewrite_primary(good, bad / "nolumi.root", lambda c: {k: v for k, v in c.items() if k != "luminosityBlock"})

    def duplicate(columns: dict[str, object]) -> dict[str, object]:
        import awkward as ak

        events = ak.to_numpy(columns["event"]).copy()  # type: ignore[arg-type]
        events[7] = events[3]
        lumis = ak.to_numpy(columns["luminosityBlock"]).copy()  # type: ignore[arg-type]
        lumis[7] = lumis[3]
        return {**columns, "event": events, "luminosityBlock": lumis}

    rewrite_primary(good, bad / "dupkeys.root", duplicate)
    dup_key = tuple(int(getattr(read_keys(good), k)[3]) for k in KEYS)
    spec = write_spec_file(tmp_path / "spec.json", [friends[0]])
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec, worker_env(s3_server, rid))
    files = {1: good, 2: bad / "truncated.root", 3: bad / "garbage.root", 4: bad / "empty.root",
             5: bad / "nolumi.root", 6: bad / "dupkeys.root"}
    try:
        for file_id, path in files.items():
            app_publisher.send_file(rid, file_id, [str(path)], app_recorder.endpoint(rid))
        reports = settle(app_recorder, rid, len(files), 120)
        expected = {1: Expect(good), 2: Expect(files[2], "failure"), 3: Expect(files[3], "failure"),
                    4: Expect(files[4], rows=0), 5: Expect(files[5], "failure"), 6: Expect(files[6], "failure")}
        store = S3Store(s3_server.settings())
        verdict = check_request(store, rid, reports, expected)
        import io

        import pyarrow.parquet as pq

        by_id = {int(r["file-id"]): r for r in reports}
        schemas = {k: pq.read_schema(io.BytesIO(store.get_bytes(rid, str(by_id[k]["s3-object-name"])) or b""))
                   for k in (1, 4)}
        assert schemas[4].remove_metadata().equals(schemas[1].remove_metadata()), (schemas[4], schemas[1])
        log = worker.log()
        assert "luminosityBlock" in log[log.index("file_id=5"):]
        assert "uplicate" in log and str(dup_key[2]) in log, log[-3000:]
        cases["truncated"].observe("failure report, no object")
        cases["garbage"].observe("failure report, no object")
        cases["empty"].observe(f"success, 0 rows, schema identical to a full file's ({len(schemas[1])} columns)")
        cases["nokey"].observe("failure report; the log names luminosityBlock; no object")
        cases["dup"].observe(f"failure report; the log names key {dup_key}; no object")
        for case in cases.values():
            case.note(f"whole request: {verdict.summary()}")
    finally:
        assert worker.terminate() == 0


def test_duplicate_keys_in_a_friend(
    tmp_path: Path, dataset: tuple[list[Path], list[Path]], s3_server: S3Server, rabbitmq_url: str, rid: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder, reliability: CaseRecorder,
) -> None:
    case = reliability.case("friend-duplicates", bullet=INPUT_BULLET, fault="a friend with a duplicated key",
                            expectation="every file fails naming the key and the friend file; no object")
    primaries, _ = dataset
    keys = read_keys(primaries[0])
    rows = np.arange(len(keys))
    rows[5] = 2
    friend = tmp_path / "dup_friend.root"
    write_plain_friend(friend, keys.take(rows))
    spec = write_spec_file(tmp_path / "spec.json", [friend], friend_columns=["weight_up"])
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec, worker_env(s3_server, rid))
    files = {1: primaries[0], 2: primaries[1]}
    try:
        for file_id, path in files.items():
            app_publisher.send_file(rid, file_id, [str(path)], app_recorder.endpoint(rid))
        reports = settle(app_recorder, rid, 2, 120)
        verdict = check_request(S3Store(s3_server.settings()), rid, reports,
                                {k: Expect(p, "failure") for k, p in files.items()})
        log = worker.log()
        assert "uplicate" in log and str(int(keys.event[2])) in log and friend.name in log, log[-3000:]
        case.observe(f"both files fail, the log names key event={int(keys.event[2])} in {friend.name}; "
                     f"{verdict.summary()}")
    finally:
        assert worker.terminate() == 0


def test_tampered_friend_is_caught_by_the_integrity_check(
    tmp_path: Path, s3_server: S3Server, rabbitmq_url: str, rid: str, app_publisher: AppPublisher,
    app_recorder: AppRecorder, reliability: CaseRecorder,
) -> None:
    case = reliability.case(
        "friend-tampered", bullet=INPUT_BULLET,
        fault="friend keys swapped in place after its key index was cached (same size and ROOT UUID)",
        expectation="the integrity check aborts the file: failure report, no object; never a row pairing "
        "two different events",
    )
    primaries = make_primaries(tmp_path / "nano", 2, SMALL_EVENTS, seed=31, first_file=40)
    friends = []
    for number, primary in enumerate(primaries):
        keys = read_keys(primary)
        order = np.random.default_rng(number).permutation(len(keys))
        friends.append((tmp_path / f"plain_friend_{number}.root", keys.take(order)))
        write_plain_friend(*friends[-1])
    spec = write_spec_file(tmp_path / "spec.json", [f for f, _ in friends], friend_columns=["weight_up"])
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec, worker_env(s3_server, rid, JOINER_RESULT_CACHE="false"))
    endpoint = app_recorder.endpoint(rid)
    try:
        app_publisher.send_file(rid, 1, [str(primaries[0])], endpoint)
        first = app_recorder.wait_for(rid, 1, timeout_s=120)
        assert first[0]["status"] == "success"
        swap_friend_keys_in_place(friends[1][0], friends[1][1], 10, 20)
        app_publisher.send_file(rid, 2, [str(primaries[1])], endpoint)
        reports = settle(app_recorder, rid, 2, 120)
        expected = {1: Expect(primaries[0]), 2: Expect(primaries[1], "failure")}
        verdict = _check_weight_only(s3_server, rid, reports, expected)
        log = worker.log()
        assert "mismatch" in log.lower(), log[-3000:]
        case.observe(f"file joined against the tampered friend fails with a key mismatch; {verdict}")
    finally:
        assert worker.terminate() == 0


def _check_weight_only(s3: S3Server, rid: str, reports: list[dict[str, object]], expected: Mapping[int, Expect]) -> str:
    """The invariant for a spec whose friend gives `weight_up` only (friends written by write_plain_friend)."""
    import io

    import pyarrow.parquet as pq

    from joiner.datagen import KeyBlock, friend_values

    store = S3Store(s3.settings())
    by_id = {int(r["file-id"]): r for r in reports}
    assert sorted(by_id) == sorted(expected) and len(reports) == len(expected), reports
    names = sorted(store.list_names(rid))
    wanted = []
    for file_id, expect in expected.items():
        report = by_id[file_id]
        assert report["status"] == expect.status, report
        if expect.status == "failure":
            continue
        wanted.append(str(report["s3-object-name"]))
        table = pq.read_table(io.BytesIO(store.get_bytes(rid, wanted[-1]) or b""))
        keys = read_keys(expect.path)
        for key in KEYS:
            np.testing.assert_array_equal(table.column(key).to_numpy(), getattr(keys, key))
        values = friend_values(KeyBlock(keys.run, keys.luminosityBlock, keys.event, keys.n_jet))
        np.testing.assert_array_equal(table.column("sys_weight_up").to_numpy(), values["weight_up"])
    assert names == sorted(wanted), names
    return f"{len(reports)} report(s), {len(names)} object(s) with verified pairs, nothing else"


# ---------------------------------------------------------------------------------------------------------
# Bad messages and specs


def test_malformed_oversized_and_unknown_messages(
    tmp_path: Path, dataset: tuple[list[Path], list[Path]], s3_server: S3Server, rabbitmq_url: str, rid: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder, reliability: CaseRecorder,
) -> None:
    case = reliability.case(
        "bad-messages", bullet=MESSAGE_BULLET,
        fault="malformed JSON, 8 MiB body, unknown task name, no headers, pickle content type, kwargs "
        "without file_id",
        expectation="each rejected without requeue (no report, no object), counted in metrics; the next "
        "valid task succeeds",
    )
    primaries, friends = dataset
    spec = write_spec_file(tmp_path / "spec.json", [friends[0]])
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec, worker_env(s3_server, rid))
    queue = queue_name(rid)
    endpoint = app_recorder.endpoint(rid)
    celery_headers = {"task": TASK_NAME, "id": str(uuid.uuid4()), "lang": "py"}
    no_file_id = json.dumps([[], {"request_id": rid, "paths": [str(primaries[0])], "service_endpoint": endpoint}, {}])
    bad = [
        (b'[[], {"request_id": ', celery_headers, "application/json"),
        (b'[[], {"pad": "' + b"x" * (8 * 1024 * 1024) + b'"}, {}]', celery_headers, "application/json"),
        (b"[[], {}, {}]", {**celery_headers, "task": "celery.chord_unlock"}, "application/json"),
        (b"[[], {}, {}]", None, "application/json"),
        (b"\x80\x04\x95", celery_headers, "application/x-python-serialize"),
        (no_file_id.encode(), celery_headers, "application/json"),
    ]
    try:
        for body, headers, content_type in bad:
            publish_raw(rabbitmq_url, queue, body, headers=headers, content_type=content_type)
        worker.wait_log("rejected without requeue", timeout_s=30)
        wait_for(lambda: worker.log().count("rejected without requeue") >= len(bad), 60, "every bad message rejected")
        app_publisher.send_file(rid, 1, [str(primaries[0])], endpoint)
        reports = settle(app_recorder, rid, 1, 120)
        verdict = check_request(S3Store(s3_server.settings()), rid, reports, {1: Expect(primaries[0])})
        state = queue_state(rabbitmq_url, queue)
        assert state is not None and state[0] == 0, f"messages left in the queue: {state}"
        metrics = worker.probe("/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("servicex_joiner_invalid_messages_total"))
        assert float(line.split()[-1]) == len(bad), line
        case.observe(f"{len(bad)} rejected (metric {line.split()[-1]}), queue empty; {verdict.summary()}")
    finally:
        assert worker.terminate() == 0


def test_spec_with_a_forbidden_location(
    tmp_path: Path, dataset: tuple[list[Path], list[Path]], s3_server: S3Server, rabbitmq_url: str, rid: str,
    app_publisher: AppPublisher, app_recorder: AppRecorder, reliability: CaseRecorder,
) -> None:
    case = reliability.case(
        "forbidden-location", bullet=MESSAGE_BULLET,
        fault="spec whose friend lies outside JOINER_ALLOWED_LOCATIONS",
        expectation="every file fails naming the location, nothing read or written",
    )
    primaries, friends = dataset
    outside = tmp_path / "outside"
    outside.mkdir()
    friend = Path(shutil.copy(friends[0], outside / "friend.root"))
    spec = write_spec_file(tmp_path / "spec.json", [friend])
    allowed = str(primaries[0].parent) + "/"
    worker = start_worker(tmp_path, rid, rabbitmq_url, spec,
                          worker_env(s3_server, rid, JOINER_ALLOWED_LOCATIONS=f"root://,{allowed}"))
    files = {1: primaries[0], 2: primaries[1]}
    try:
        for file_id, path in files.items():
            app_publisher.send_file(rid, file_id, [str(path)], app_recorder.endpoint(rid))
        reports = settle(app_recorder, rid, 2, 120)
        verdict = check_request(S3Store(s3_server.settings()), rid, reports,
                                {k: Expect(p, "failure") for k, p in files.items()})
        log = worker.log()
        assert str(friend) in log and "allowed" in log, log[-3000:]
        case.observe(f"both files fail, the log names {friend.name} and the allowed prefixes; {verdict.summary()}")
    finally:
        assert worker.terminate() == 0
