"""Load test: many simulated users submitting joins through the stand-in App, RabbitMQ, S3 and 2 workers.

Processes (all on 127.0.0.1): SeaweedFS, our code generator (`servicex-joiner serve`), the stand-in ServiceX
App (`tests.standin_app`, with `--max-transformers`, so at most N transformer workers run at once and a
request's worker starts when a slot frees, as on a cluster with room for N transformer pods), and the
machine's RabbitMQ (queues are per request: nothing else is touched). `--users` threads submit
`--requests` requests in all over HTTP, as the servicex client does, each of `--files-min`..`--files-max`
files drawn from a pool of generated NanoAOD-like files (`joiner.datagen`) in overlapping datasets, with one
of a handful of specs, and poll until the request completes.

Measured: throughput (events/s, files/s), request latency p50/p95/p99 (submit → complete), time waiting
for a worker slot, queue depth over time (passive declares of every request's queue), worker RSS (each
worker process with its transform process), result-cache hits (from the workers' logs), key-index loads and
fragments, and lost or duplicated outputs (every file must have exactly one success report and one object;
the bucket nothing else). Bounded by `--timeout`. Figures go to `benchmarks/results/load.json`, committed
with the code they measure, and RELIABILITY.md is rendered again (`benchmarks/reliability_report.py`).

    python benchmarks/bench_load.py                   # 20 users, 100 requests, 2 workers
    python benchmarks/bench_load.py --requests 20 --users 5 --pool-files 12   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pika
import pika.exceptions

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from joiner.datagen import generate_friends, generate_nanoaod  # noqa: E402
from joiner.spec import parse_spec_text  # noqa: E402
from tests.fixtures.private_seaweedfs import PrivateS3  # noqa: E402
from tests.fixtures.servicex_stack import start_join_stack, stop_join_stack  # noqa: E402
from tests.reliability_support import fast_compression, read_keys, rss_bytes, tree_pids  # noqa: E402
from transformer.naming import object_name  # noqa: E402
from transformer.storage.s3 import S3Store  # noqa: E402

RABBIT_URL = os.environ.get("JOINER_TEST_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
OUTPUT = REPO / "benchmarks" / "results" / "load.json"


@dataclass
class Dataset:
    """A dataset of the pool: primary files and one friend file per primary (reordered)."""

    name: str
    files: list[Path]
    friends: list[Path]


@dataclass
class RequestRecord:
    """One submitted request and what became of it."""

    user: int
    dataset: str
    spec: str
    files: list[str]
    submitted: float = 0.0
    completed: float | None = None
    request_id: str | None = None
    error: str | None = None
    status: dict[str, Any] = field(default_factory=dict)


def make_pool(folder: Path, datasets: int, files_per_dataset: int, events: int) -> list[Dataset]:
    """Generate the pool: `datasets` datasets of `files_per_dataset` files, each with its friends."""
    pool = []
    for number in range(datasets):
        directory = folder / f"ds{number}"
        paths = []
        for index in range(files_per_dataset):
            path = directory / "nano" / f"nano_{index}.root"
            first = (number * files_per_dataset + index) * events
            generate_nanoaod(path, events, first_index=first, run=number + 1, seed=number + 1,
                             compression=fast_compression())
            paths.append(path)
        (directory / "friends").mkdir(parents=True, exist_ok=True)
        friends = generate_friends([read_keys(p) for p in paths], directory / "friends", kind="reordered",
                                   seed=100 + number, compression=fast_compression())
        pool.append(Dataset(f"ds{number}", paths, friends))
    return pool


def specs_for(dataset: Dataset) -> dict[str, str]:
    """A handful of specs over a dataset, as selection strings (canonical JSON)."""
    friend = {"name": "sys", "files": [str(f) for f in dataset.friends], "tree": "Friends"}
    documents: dict[str, dict[str, Any]] = {
        "jets+sf": {"key": "cms", "primary": {"columns": ["nJet", "Jet_pt", "Jet_eta", "MET_pt"]},
                    "friends": [{**friend, "columns": ["weight_up", "Jet_sf"], "prefix": "sys_"}]},
        "muons+weights": {"key": "cms", "primary": {"columns": ["nMuon", "Muon_pt", "Muon_eta", "genWeight"]},
                          "friends": [{**friend, "columns": ["weight_up", "weight_down", "mva_score"],
                                       "how": "inner"}]},
        "met-only": {"key": "cms", "primary": {"columns": ["MET_pt", "MET_phi", "PV_npvs"]}, "friends": []},
    }  # fmt: skip
    return {name: parse_spec_text(json.dumps(doc)).canonical_json() for name, doc in documents.items()}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


class QueueWatcher(threading.Thread):
    """Samples the ready tasks of every live request's queue once a second."""

    def __init__(self, records: list[RequestRecord], started: float) -> None:
        super().__init__(daemon=True)
        self.records = records
        self.started = started
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
        channel = connection.channel()
        try:
            while not self.stop.is_set():
                depth = 0
                for record in list(self.records):
                    if record.request_id is None or record.completed is not None:
                        continue
                    try:
                        frame = channel.queue_declare(f"transformer-{record.request_id}", passive=True)
                        depth += int(frame.method.message_count)
                    except pika.exceptions.ChannelClosedByBroker:
                        channel = connection.channel()  # the queue is gone (request done) or not yet there
                self.samples.append((time.monotonic() - self.started, depth))
                self.stop.wait(1.0)
        finally:
            if connection.is_open:
                connection.close()


class MemoryWatcher(threading.Thread):
    """Samples the resident memory of each running transformer (worker + its transform process) per second."""

    def __init__(self, app_pid: int) -> None:
        super().__init__(daemon=True)
        self.app_pid = app_pid
        self.samples: list[float] = []  # MiB per worker tree, per sample
        self.concurrent: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from tests.reliability_support import children, cmdline

        while not self.stop.is_set():
            workers = [p for p in children(self.app_pid) if "transformer.cli worker" in cmdline(p)]
            self.concurrent.append(len(workers))
            for pid in workers:
                self.samples.append(sum(rss_bytes(p) for p in tree_pids(pid)) / 2**20)
            self.stop.wait(1.0)


def run_user(user: int, plan: list[tuple[Dataset, str, str, list[str]]], app_url: str, records: list[RequestRecord],
             lock: threading.Lock, deadline: float, rng: random.Random) -> None:
    """One simulated user: submit each planned request in turn and wait for it (closed loop)."""
    with httpx.Client(timeout=60) as client:
        for dataset, spec_name, selection, files in plan:
            record = RequestRecord(user, dataset.name, spec_name, files)
            with lock:
                records.append(record)
            record.submitted = time.time()
            body = {"title": f"user{user}-{spec_name}", "did": None, "file-list": files, "selection": selection,
                    "codegen": "join", "result-destination": "object-store", "result-format": "parquet"}
            answer = client.post(f"{app_url}/servicex/transformation", json=body)
            if answer.status_code != 200:
                record.error = f"submit: HTTP {answer.status_code} {answer.text[:200]}"
                continue
            record.request_id = answer.json()["request_id"]
            while time.monotonic() < deadline:
                status = client.get(f"{app_url}/servicex/transformation/{record.request_id}").json()
                if status["status"] == "Complete":
                    record.completed = time.time()
                    record.status = status
                    break
                time.sleep(0.5)
            else:
                record.error = "not complete before the deadline"
                return
            time.sleep(rng.uniform(0.0, 1.0))  # think time


def plan_requests(args: argparse.Namespace, pool: list[Dataset], rng: random.Random) -> list[list[Any]]:
    """Who submits what: datasets drawn with unequal popularity (so requests overlap), files, specs."""
    weights = [1.0 / (k + 1) for k in range(len(pool))]  # Zipf-like popularity
    plans: list[list[Any]] = [[] for _ in range(args.users)]
    for number in range(args.requests):
        dataset = rng.choices(pool, weights)[0]
        specs = specs_for(dataset)
        spec_name = rng.choice(sorted(specs))
        count = rng.randint(args.files_min, min(args.files_max, len(dataset.files)))
        start = rng.randrange(0, len(dataset.files) - count + 1)  # a contiguous run: analysts take ranges
        files = [str(p) for p in dataset.files[start : start + count]]
        plans[number % args.users].append((dataset, spec_name, specs[spec_name], files))
    return plans


def parse_log_time(line: str) -> float | None:
    """Epoch seconds of a log line starting with logging's default asctime."""
    match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})", line)
    if match is None:
        return None
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(match[2]) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--files-min", type=int, default=5)
    parser.add_argument("--files-max", type=int, default=20)
    parser.add_argument("--datasets", type=int, default=3)
    parser.add_argument("--pool-files", type=int, default=20, help="files per dataset")
    parser.add_argument("--events", type=int, default=20_000, help="events per file")
    parser.add_argument("--workers", type=int, default=2, help="transformer workers at once")
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if args.requests < args.users:
        parser.error("--requests must be at least --users")

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"stopped by signal {signum}"))  # run `finally`
    rng = random.Random(args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sxj-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir {workdir}", flush=True)
    t0 = time.monotonic()
    pool = make_pool(workdir / "pool", args.datasets, args.pool_files, args.events)
    print(f"pool: {args.datasets} datasets × {args.pool_files} files × {args.events:,} events in "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    # Every request's bucket is a SeaweedFS collection with volumes of its own: small volumes, so that a
    # hundred buckets do not exhaust the volume slots (`weed mini` sizes them at 128 MB by default).
    s3_process = PrivateS3(_fresh(workdir / "s3"), extra_args=("-master.volumeSizeLimitMB=8", "-volume.max=0"))
    s3_process.start()
    s3 = s3_process.server
    stack = None
    try:
        stack = start_join_stack(
            workdir / "stack", s3=s3, rabbit_url=RABBIT_URL, allowed_locations=f"{workdir / 'pool'}/",
            transformer_env={"JOINER_FILE_DEADLINE_S": "300", "JOINER_CACHE_BUCKET": "sxj-load-cache"},
            app_args=["--max-transformers", str(args.workers)],
        )
        plans = plan_requests(args, pool, rng)
        records: list[RequestRecord] = []
        lock = threading.Lock()
        started_wall, started = time.time(), time.monotonic()
        deadline = started + args.timeout
        queue_watch = QueueWatcher(records, started)
        memory_watch = MemoryWatcher(stack.app.process.pid)
        queue_watch.start()
        memory_watch.start()
        users = [
            threading.Thread(target=run_user, args=(u, plans[u], stack.app_url, records, lock, deadline,
                                                    random.Random(args.seed * 1000 + u)), daemon=True)
            for u in range(args.users)
        ]  # fmt: skip
        for thread in users:
            thread.start()
        for thread in users:
            thread.join(max(0.0, deadline - time.monotonic()) + 5)
        duration = time.monotonic() - started
        queue_watch.stop.set()
        memory_watch.stop.set()
        queue_watch.join()
        memory_watch.join()
        figures = collect(args, stack, s3, records, queue_watch, memory_watch, duration, started_wall)
    finally:
        if stack is not None:
            stop_join_stack(stack)
        s3_process.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if k != "queue_depth_series"}, indent=1))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import reliability_report

    try:
        reliability_report.render_to(reliability_report.DEFAULT_OUTPUT, load_path=args.output)
        print(f"wrote {reliability_report.DEFAULT_OUTPUT}")
    except OSError as error:
        print(f"RELIABILITY.md not written: {error}")
    return 0 if figures["lost"] == 0 and figures["duplicated"] == 0 and figures["violations"] == 0 else 1


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def collect(args: argparse.Namespace, stack: Any, s3: Any, records: list[RequestRecord], queue_watch: QueueWatcher,
            memory_watch: MemoryWatcher, duration: float, started_wall: float) -> dict[str, Any]:
    """Check every request's outputs and put the figures together."""
    store = S3Store(s3.settings())
    app = httpx.Client(base_url=stack.app_url, timeout=60)
    timings = app.get("/standin/timings").json()
    stats = app.get("/standin/stats").json()
    violations = app.get("/standin/violations").json()
    lost = duplicated = done = failed = events = output_bytes = objects = 0
    latencies, waits = [], []
    for record in records:
        if record.request_id is None:
            lost += len(record.files)
            continue
        results = app.get(f"/servicex/transformation/{record.request_id}/results").json()["results"]
        per_file = Counter(int(r["file-id"]) for r in results)
        duplicated += sum(n - 1 for n in per_file.values() if n > 1)
        success = {int(r["file-id"]): r for r in results if r["transform_status"] == "success"}
        failed += sum(1 for r in results if r["transform_status"] != "success")
        expected = {object_name(path, parquet=True) for i, path in enumerate(record.files, 1) if i in success}
        names = set(store.list_names(record.request_id))
        lost += len(record.files) - len(success)
        duplicated += len(names - expected)
        lost += len(expected - names)
        objects += len(names)
        done += len(success)
        events += sum(int(r["total-events"]) for r in success.values())
        output_bytes += sum(int(r["total-bytes"]) for r in success.values())
        if record.completed is not None:
            latencies.append(record.completed - record.submitted)
        timing = timings.get(record.request_id, {})
        if timing.get("transformer_started"):
            waits.append(timing["transformer_started"] - timing["submitted"])
    duplicated += int(stats["duplicate_reports"])
    logs = sorted(stack.workdir.glob("*/transformer.log"))
    text = [p.read_text(errors="replace") for p in logs]
    hits = sum(t.count("result cache hit") for t in text)
    misses = sum(t.count("result cache miss") for t in text)
    index_loads = sum(len(re.findall(r"key index of .* loaded", t)) for t in text)
    index_uses = sum(len(re.findall(r"file_id=\d+ joining", t)) for t in text)
    starts = []
    for log_path, body in zip(logs, text, strict=True):
        timing = timings.get(log_path.parent.name, {})
        consuming = next((line for line in body.splitlines() if "consuming (prefetch" in line), None)
        at = parse_log_time(consuming) if consuming else None
        if at is not None and timing.get("transformer_started"):
            starts.append(at - timing["transformer_started"])
    per_kind = {"hit": [0, 0.0], "miss": [0, 0.0]}  # events and transform seconds, by result-cache outcome
    done_lines = 0
    for body in text:
        # "done: N events, object NAME (B bytes) in S s (read 0.61, ...; result cache: miss)"
        for match in re.finditer(r"done: (\d+) events, .* in ([0-9.]+) s \([^)]*result cache: (\w+)\)", body):
            kind = per_kind.setdefault(match[3], [0, 0.0])
            kind[0] += int(match[1])
            kind[1] += float(match[2])
            done_lines += 1
    if done_lines < done:
        raise RuntimeError(f"{done_lines} 'done:' lines parsed in the worker logs for fewer files than succeeded: "
                           "the log line's format changed; update the pattern in collect()")
    busy = sum(seconds for _, seconds in per_kind.values())
    fragments = sum(not name.endswith(".lease") for name in store.list_names("sxj-load-cache", prefix="index/"))
    friend_files = len({f for r in records for f in _friends_of(r)})
    series = queue_watch.samples
    step = max(1, len(series) // 10)
    cpu = os.cpu_count() or 1
    return {
        "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(started_wall)),
        "machine": f"{cpu} cores, shared by every process of the run",
        "config": {
            "users": args.users, "requests": args.requests, "files_min": args.files_min, "files_max": args.files_max,
            "pool_files": args.datasets * args.pool_files, "datasets": args.datasets, "events_per_file": args.events,
            "specs": 3, "workers": args.workers, "request_files_total": sum(len(r.files) for r in records),
        },
        "duration_s": duration,
        "requests_completed": sum(r.completed is not None for r in records),
        "request_errors": [r.error for r in records if r.error][:5],
        "files_done": done,
        "files_failed": failed,
        "events": events,
        "events_per_s": events / duration,
        "files_per_s": done / duration,
        "latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                      "p99": percentile(latencies, 99), "max": max(latencies, default=float("nan"))},
        "slot_wait_s": {"p50": percentile(waits, 50), "p95": percentile(waits, 95)},
        "worker_start_s": statistics.median(starts) if starts else float("nan"),
        "queue_depth_max": max((d for _, d in series), default=0),
        "queue_depth_mean": statistics.fmean(d for _, d in series) if series else 0.0,
        "queue_depth_series": [series[i] for i in range(0, len(series), step)][:11],
        "worker_rss_mb": {"max": max(memory_watch.samples, default=0.0),
                          "mean": statistics.fmean(memory_watch.samples) if memory_watch.samples else 0.0},
        "cores_per_worker": 1.0,
        "join_events_per_s": per_kind["miss"][0] / per_kind["miss"][1] if per_kind["miss"][1] else 0.0,
        "copy_events_per_s": per_kind["hit"][0] / per_kind["hit"][1] if per_kind["hit"][1] else 0.0,
        "busy_fraction": busy / (duration * args.workers),
        "cache": {"result_hits": hits, "result_lookups": hits + misses,
                  "result_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
                  "index_loads": index_loads, "index_uses": index_uses, "index_fragments": fragments,
                  "friend_files": friend_files},
        "output_bytes": output_bytes,
        "objects": objects,
        "lost": lost,
        "duplicated": duplicated,
        "violations": len(violations),
    }


def _friends_of(record: RequestRecord) -> list[str]:
    if record.spec == "met-only":
        return []
    folder = Path(record.files[0]).parent.parent / "friends"
    return [str(p) for p in folder.glob("*.root")]


if __name__ == "__main__":
    raise SystemExit(main())
