"""The shared result cache: a second request for the same spec and files against the first one.

The dataset and spec of `bench_worker.py` (10 NanoAOD-like files x 10^5 events, LZMA, an aligned and a
reordered friend). Per repeat, with a fresh cache bucket: (1) the first request, one worker, everything
computed (cold key-index and result caches; each result enters the cache as a reference to its object);
(2) a second request (another request id, same spec and files), one worker: every file is a server-side
copy of the first request's object, and each entry is then promoted to a copy of its own; (3) a third
request, served from those copies; (4) the same request with the result cache off
(`JOINER_RESULT_CACHE=false`, key index warm): what a request costs without it. Each timing runs from the
tasks' publication to the last file-complete report and includes the worker's start (tasks are queued
first, as the App does); the S3 server's CPU meanwhile is printed beside it. Outputs of (1), (2) and (3)
are compared byte for byte. Repeats are interleaved; medians are printed. Needs RabbitMQ on 127.0.0.1:5672.

Usage: python benchmarks/bench_result_cache.py [--data DIR] [--events N] [--files N] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_worker import _tree_cpu, prepare  # noqa: E402

from tests.fixtures.app_recorder import AppRecorder  # noqa: E402
from tests.fixtures.rabbitmq import RABBIT_URL, AppPublisher, delete_queue  # noqa: E402
from tests.fixtures.seaweedfs import S3Server, free_port, start_seaweedfs, stop_seaweedfs  # noqa: E402
from tests.worker_support import WorkerProcess  # noqa: E402
from transformer.result_cache import REFERENCE_SUFFIX, RESULTS_PREFIX  # noqa: E402
from transformer.storage.s3 import S3Store  # noqa: E402


def run_request(
    server: S3Server, spec: Path, inputs: list[Path], env: dict[str, str], work: Path, recorder: AppRecorder,
    publisher: AppPublisher,
) -> tuple[str, float, float, str, list[dict[str, object]], float]:
    """One request served by one worker: (request id, wall s, CPU s, metrics text, reports, S3 server CPU s)."""
    request_id = str(uuid.uuid4())
    s3_cpu0 = _tree_cpu(server.process.pid)
    t0 = time.perf_counter()
    for file_id, path in enumerate(inputs, start=1):
        publisher.send_file(request_id, file_id, [str(path)], recorder.endpoint(request_id))
    worker = WorkerProcess(request_id=request_id, rabbit_url=RABBIT_URL, spec=spec,
                           env={**server.env(), "JOINER_ALLOWED_LOCATIONS": "/", **env},
                           log=work / f"{request_id}.log", probe_port=free_port())
    reports = recorder.wait_for(request_id, len(inputs), timeout_s=1800)
    wall = time.perf_counter() - t0
    time.sleep(1.0)  # the last cache write runs just after its report
    cpu = _tree_cpu(worker.process.pid)
    s3_cpu = _tree_cpu(server.process.pid) - s3_cpu0
    metrics = worker.probe("/metrics").text
    worker.terminate()
    delete_queue(RABBIT_URL, f"transformer-{request_id}")
    failed = [r for r in reports if r["status"] != "success"]
    if failed:
        raise RuntimeError(f"{len(failed)} files failed; see {work / (request_id + '.log')}")
    return request_id, wall, cpu, metrics, reports, s3_cpu


def _metric(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / ".cache" / "bench-worker"), help="dataset folder")
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec = prepare(Path(args.data), args.files, args.events)
    inputs = [Path(args.data) / f"nano_{i}.root" for i in range(args.files)]
    names = ("first request (cold caches)", "second request (hits on references)",
             "third request (hits on the cache's copies)", "a request with the result cache off")
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    ratios: list[tuple[float, float]] = []
    copy_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-result-cache-") as tmp:
        work = Path(tmp)
        server = start_seaweedfs(work)
        recorder = AppRecorder()
        publisher = AppPublisher(RABBIT_URL)
        store = S3Store(server.settings())
        try:
            for repeat in range(args.repeats):
                bucket = {"JOINER_CACHE_BUCKET": "cache-" + uuid.uuid4().hex[:12]}
                first = run_request(server, spec, inputs, bucket, work, recorder, publisher)
                entries = store.list_names(bucket["JOINER_CACHE_BUCKET"], RESULTS_PREFIX)
                if len(entries) != args.files or not all(e.endswith(REFERENCE_SUFFIX) for e in entries):
                    raise RuntimeError(f"first request: cache entries {entries}, not {args.files} references")
                second = run_request(server, spec, inputs, bucket, work, recorder, publisher)
                third = run_request(server, spec, inputs, bucket, work, recorder, publisher)
                off = run_request(server, spec, inputs, {**bucket, "JOINER_RESULT_CACHE": "false"}, work,
                                  recorder, publisher)
                for served in (second, third):
                    hits = _metric(served[3], 'servicex_joiner_result_cache_total{outcome="hit"}')
                    if hits != args.files:
                        raise RuntimeError(f"request {served[0]}: {hits:g} hits of {args.files} files")
                    for report in first[4]:
                        name = str(report["s3-object-name"])
                        if store.get_bytes(first[0], name) != store.get_bytes(served[0], name):
                            raise RuntimeError(f"{name} differs between the requests")
                copy_seconds.append(
                    _metric(third[3], 'servicex_joiner_stage_seconds_sum{stage="cache"}') / args.files
                )
                for name, measured in zip(names, (first, second, third, off), strict=True):
                    runs[name].append((measured[1], measured[2], measured[5]))
                ratios.append((second[1] / first[1], third[1] / first[1]))
                print(f"repeat {repeat + 1}: first {first[1]:.2f} s, second {second[1]:.2f} s, third {third[1]:.2f} s, "
                      f"without result cache {off[1]:.2f} s; second/first {ratios[-1][0]:.3f}", flush=True)
        finally:
            publisher.close()
            recorder.close()
            stop_seaweedfs(server)
    events = args.files * args.events
    print(f"{args.files} files x {args.events} events ({events} events), spec of bench_worker.py; one worker per "
          f"request; medians of {args.repeats} interleaved repeats")
    print(f"{'run':44s} {'wall s':>8s} {'events/s':>11s} {'CPU s':>8s} {'S3 srv CPU s':>13s}")
    for name in names:
        wall, cpu, s3 = (statistics.median(row[i] for row in runs[name]) for i in range(3))
        print(f"{name:44s} {wall:8.2f} {events / wall:11.0f} {cpu:8.2f} {s3:13.2f}")
    print(f"second / first request time:                 {statistics.median(r[0] for r in ratios):.3f}")
    print(f"third / first request time:                  {statistics.median(r[1] for r in ratios):.3f}")
    print(f"server-side copy of a cached result, per file: {1000 * statistics.median(copy_seconds):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
