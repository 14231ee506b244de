"""Worker throughput through RabbitMQ and S3 against `servicex-joiner join --workers 1` on the same files.

Generates 10 NanoAOD-like files of 10^5 events (LZMA) with one aligned and one reordered friend (cached in
--data), then, in one run: (1) `servicex-joiner join --workers 1`; (2) one `servicex-joiner worker`
consuming 10 Celery-published tasks, uploading to SeaweedFS and reporting to a recording App; (3) two
workers on the same queue; (4) one worker writing its results to a directory (`--result-destination
volume`) instead of S3, which separates the worker's own overhead from the upload. Each timing includes
process start-up (tasks are queued before the workers start, as the App does); every run starts with cold
caches (a fresh `--index-cache` directory for `join`, a fresh cache bucket, for key indexes and results,
for the workers). The project's modules are byte-compiled first, as the image's install does. CPU-seconds
are user+system time of the process trees (workers, their fork servers and transform processes; the join
command and its pool); the S3 server's CPU during each run is printed
beside them (SeaweedFS shares the two cores here; a deployment's MinIO runs elsewhere). The runs are
repeated in turn (`--repeats`, interleaved, so that the machine's changing load hits each alike; every
other repeat in reverse order, so that a drift within a repeat favours no run) and medians are printed
beside every repeat. Needs RabbitMQ on 127.0.0.1:5672.

Usage: python benchmarks/bench_worker.py [--data DIR] [--events N] [--files N] [--repeats N]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from joiner.datagen import generate_dataset, generate_friends  # noqa: E402
from tests.fixtures.app_recorder import AppRecorder  # noqa: E402
from tests.fixtures.rabbitmq import RABBIT_URL, AppPublisher, delete_queue  # noqa: E402
from tests.fixtures.seaweedfs import free_port, start_seaweedfs, stop_seaweedfs  # noqa: E402
from tests.worker_support import WorkerProcess  # noqa: E402


def _tree_cpu(root: int) -> float:
    """CPU seconds of `root` and its live descendants, with what they reaped (utime+stime+cutime+cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(child for child, (parent, _) in stats.items() if parent == pid)
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compile_project() -> None:
    """Byte-compile the project's modules, as the image's `pip install` of the wheel does.

    Every process of a run (the join command; each worker's consumer and fork server) then loads them, as
    in a deployment. An editable install under PYTHONDONTWRITEBYTECODE (set on this machine) compiles them
    again in every process instead, which charges the workers twice per worker and `join` once.
    """
    for package in ("joiner", "transformer"):
        compileall.compile_dir(REPO / package, quiet=1)


def prepare(data: Path, files: int, events: int) -> Path:
    """Generate the dataset once (reused when present), compile the project and write the spec; return its path."""
    compile_project()
    stamp = data / f"ready-{files}x{events}"
    if not stamp.exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        _, keys = generate_dataset(data, n_files=files, events_per_file=events, seed=1)
        generate_friends(keys, data, kind="aligned", seed=2)
        generate_friends(keys, data, kind="reordered", drop_fraction=0.1, seed=3)
        stamp.write_text("ok")
    spec = {
        "primary": {
            "files": [str(data / f"nano_{i}.root") for i in range(files)],
            "columns": ["Jet_*", "nJet", "Muon_*", "nMuon", "genWeight"],
        },
        "key": "cms",
        "friends": [
            {
                "name": "al",
                "files": [str(data / "aligned_*.root")],
                "tree": "Friends",
                "columns": ["weight_up", "Jet_sf"],
                "prefix": "al_",
            },
            {
                "name": "re",
                "files": [str(data / "reordered_*.root")],
                "tree": "Friends",
                "columns": ["weight_up", "Jet_sf"],
                "prefix": "re_",
                "how": "left",
            },
        ],
    }
    path = data / "bench_spec.json"
    path.write_text(json.dumps(spec))
    return path


def run_join(spec: Path, out: Path, s3_pid: int, env: dict[str, str]) -> tuple[float, float, float]:
    """`servicex-joiner join --workers 1`: (wall seconds, CPU seconds, S3 server CPU seconds meanwhile)."""
    s3_cpu0 = _tree_cpu(s3_pid)
    cpu0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "transformer.cli",
            "join",
            "--spec",
            str(spec),
            "--output",
            str(out),
            "--workers",
            "1",
            "--index-cache",
            str(out / "index-cache"),  # cold, as the workers' fresh cache bucket
            "--no-progress",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        env={**os.environ, **env},
    )
    return time.perf_counter() - t0, _children_cpu() - cpu0, _tree_cpu(s3_pid) - s3_cpu0


def run_workers(
    n_workers: int,
    spec: Path,
    inputs: list[Path],
    s3_env: dict[str, str],
    work: Path,
    recorder: AppRecorder,
    publisher: AppPublisher,
    s3_pid: int,
    *,
    volume: Path | None = None,
) -> tuple[float, float, float]:
    """`n_workers` workers consume one task per input: (wall s, CPU s, S3 server CPU s meanwhile).

    With `volume`, results go to that directory (`--result-destination volume`) instead of S3.
    """
    request_id = str(uuid.uuid4())
    s3_cpu0 = _tree_cpu(s3_pid)
    env = {**s3_env, "JOINER_ALLOWED_LOCATIONS": "/", "JOINER_CACHE_BUCKET": "cache-" + request_id[:8]}
    t0 = time.perf_counter()
    destination = "object-store" if volume is None else "volume"
    extra = [] if volume is None else ["--result-destination", "volume", "--output-dir", str(volume)]
    for file_id, path in enumerate(inputs, start=1):
        publisher.send_file(request_id, file_id, [str(path)], recorder.endpoint(request_id),
                            result_destination=destination)
    workers = [
        WorkerProcess(
            request_id=request_id,
            rabbit_url=RABBIT_URL,
            spec=spec,
            env=env,
            log=work / f"{request_id}-{i}.log",
            probe_port=free_port(),
            extra_args=extra,
        )
        for i in range(n_workers)
    ]
    reports = recorder.wait_for(request_id, len(inputs), timeout_s=1800)
    wall = time.perf_counter() - t0
    time.sleep(0.5)  # let the fork servers reap the last file processes
    cpu = sum(_tree_cpu(worker.process.pid) for worker in workers)
    s3_cpu = _tree_cpu(s3_pid) - s3_cpu0
    for worker in workers:
        worker.terminate()
    delete_queue(RABBIT_URL, f"transformer-{request_id}")
    failed = [r for r in reports if r["status"] != "success"]
    if failed:
        raise RuntimeError(f"{len(failed)} files failed; see {work}")
    return wall, cpu, s3_cpu


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO / ".cache" / "bench-worker"), help="dataset folder")
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians are reported)")
    parser.add_argument("--threads", type=int, default=None,
                        help="JOINER_THREADS for the join command and every worker (default: all cores each); "
                             "1 is what a transformer pod limited to one CPU runs")
    parser.add_argument("--no-result-cache", action="store_true", help="JOINER_RESULT_CACHE=false for the workers")
    parser.add_argument("--no-stream-uploads", action="store_true",
                        help="JOINER_STREAM_UPLOADS=false for the workers (upload each result after it is written)")
    parser.add_argument("--keep", metavar="DIR", default=None,
                        help="work in DIR and keep it (worker logs with per-file stage seconds, outputs)")
    args = parser.parse_args()
    settings = {} if args.threads is None else {"JOINER_THREADS": str(args.threads)}
    spec = prepare(Path(args.data), args.files, args.events)
    inputs = [Path(args.data) / f"nano_{i}.root" for i in range(args.files)]
    events = args.files * args.events
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        server = start_seaweedfs(work)
        recorder = AppRecorder()
        publisher = AppPublisher(RABBIT_URL)
        names = ("servicex-joiner join --workers 1", "worker x1 (RabbitMQ + S3 + reports)", "worker x2 (same queue)",
                 "worker x1, results to a volume (no upload)")
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
        ratios: list[tuple[float, float, float]] = []
        try:
            s3_env = {**server.env(), **settings}
            if args.no_result_cache:
                s3_env["JOINER_RESULT_CACHE"] = "false"
            if args.no_stream_uploads:
                s3_env["JOINER_STREAM_UPLOADS"] = "false"

            def measure(name: str, repeat: int, s3_pid: int) -> tuple[float, float, float]:
                if name == names[0]:
                    return run_join(spec, work / f"join-out-{repeat}", s3_pid, settings)
                volume = work / f"volume-{repeat}" if name == names[3] else None
                return run_workers(2 if name == names[2] else 1, spec, inputs, s3_env, work, recorder, publisher,
                                   s3_pid, volume=volume)

            for repeat in range(args.repeats):
                # every other repeat runs in reverse order, so that a machine that speeds up or slows down
                # during a repeat does not always favour the same run of the ratios
                order = list(names) if repeat % 2 == 0 else list(reversed(names))
                measured_now = {name: measure(name, repeat, server.process.pid) for name in order}
                join, one, two, local = (measured_now[name] for name in names)
                for name in names:
                    runs[name].append(measured_now[name])
                ratios.append((join[0] / one[0], one[0] / two[0], join[0] / local[0]))
                print(f"repeat {repeat + 1}: join {join[0]:.2f} s, worker x1 {one[0]:.2f} s, worker x2 {two[0]:.2f} s, "
                      f"worker x1 to a volume {local[0]:.2f} s; x1/join {ratios[-1][0]:.2f}, "
                      f"x2/x1 {ratios[-1][1]:.2f}", flush=True)
        finally:
            publisher.close()
            recorder.close()
            stop_seaweedfs(server)
    print(f"{args.files} files x {args.events} events, LZMA, aligned + reordered friend; {events} events; "
          f"medians of {args.repeats} interleaved repeats; JOINER_THREADS={args.threads or 'all cores'}, "
          f"result cache {'off' if args.no_result_cache else 'on'}, "
          f"uploads {'after the write' if args.no_stream_uploads else 'streamed'}")
    print(f"{'run':40s} {'wall s':>8s} {'events/s':>10s} {'CPU s':>8s} {'CPU us/event':>13s} {'S3 srv CPU s':>13s}")
    for name in names:
        wall = statistics.median(w for w, _, _ in runs[name])
        cpu = statistics.median(c for _, c, _ in runs[name])
        s3 = statistics.median(s for _, _, s in runs[name])
        print(f"{name:40s} {wall:8.2f} {events / wall:10.0f} {cpu:8.2f} {1e6 * cpu / events:13.2f} {s3:13.2f}")
    x1 = statistics.median(r[0] for r in ratios)
    x2 = statistics.median(r[1] for r in ratios)
    print(f"worker x1 / join --workers 1 throughput: {x1:.2f} (median of per-repeat ratios; goal >= 0.9)")
    print(f"worker x2 / worker x1 throughput:        {x2:.2f} (median of per-repeat ratios; goal >= 1.5)")
    volume = statistics.median(r[2] for r in ratios)
    print(f"worker x1 to a volume / join throughput: {volume:.2f} (no S3 upload: the worker's own overhead)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
