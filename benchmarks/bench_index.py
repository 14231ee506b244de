"""A friend's key index from the object store: one file's lookup at a time against LOOKUP_THREADS at once.

A transform process's first file needs the key index of every friend: for each friend file its header (for
the fragment's content address) and its fragment from the cache bucket, or a build where the cache has
none. Those are round trips (an object-store GET; a header read, remote for `root://` friends), so the
number of friend files, not their size, sets a warm index's cost. Measured against SeaweedFS on 127.0.0.1
(RabbitMQ is not needed), for a friend dataset of `--files` regrouped files (generated once into `--data`),
with `joiner.index.LOOKUP_THREADS` set to 1 (lookups in series, as before they were threaded) and to its
default, alternating, in one process:

- warm: every fragment cached (a second worker, or any later request);
- cold: an empty cache bucket (the first worker: each file is looked up, leased and built).

Wall and CPU seconds (this process; the S3 server's CPU beside it) are medians of `--repeats`. The local
server answers a GET in about 2 ms; a facility's object store a few network hops away takes longer. With
`--added-latency-ms`, every store request first waits that long (a sleep in this process, as a farther
server would make it wait): what the series costs where a round trip is not local.

Usage: python benchmarks/bench_index.py [--files N] [--events N] [--repeats N] [--added-latency-ms MS]
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

from bench_worker import _tree_cpu  # noqa: E402

from joiner import index as index_module  # noqa: E402
from joiner.datagen import generate_dataset, generate_friends  # noqa: E402
from joiner.index import DatasetFiles, build_dataset_indexes  # noqa: E402
from tests.fixtures.seaweedfs import start_seaweedfs, stop_seaweedfs  # noqa: E402
from transformer.storage.s3 import S3FragmentStore, S3Store  # noqa: E402

KEYS = ["run", "luminosityBlock", "event"]


def prepare(data: Path, files: int, events: int) -> list[Path]:
    """A friend dataset of `files` files regrouped from 4 primary files of `files * events / 4` events."""
    stamp = data / f"ready-{files}x{events}"
    if not stamp.exists():
        data.mkdir(parents=True, exist_ok=True)
        _, keys = generate_dataset(data / "primary", n_files=4, events_per_file=files * events // 4, seed=5)
        generate_friends(keys, data, kind="regrouped", n_files=files, seed=6)
        stamp.write_text("ok")
    return [data / f"regrouped_{i}.root" for i in range(files)]


class FartherStore(S3FragmentStore):
    """The cache bucket as seen from farther away: each request waits `latency_s` before it goes out."""

    def __init__(self, store: S3Store, bucket: str, latency_s: float) -> None:
        super().__init__(store, bucket)
        self.latency_s = latency_s

    def get(self, name: str) -> bytes | None:
        time.sleep(self.latency_s)
        return super().get(name)

    def put(self, name: str, data: bytes) -> None:
        time.sleep(self.latency_s)
        super().put(name, data)


def load(friends: list[Path], store: S3FragmentStore, threads: int, s3_pid: int) -> tuple[float, float, float]:
    """(wall s, CPU s of this process, S3 server CPU s) of one index load with `threads` lookup threads."""
    index_module.LOOKUP_THREADS = threads
    dataset = DatasetFiles("friend", [str(p) for p in friends], "Friends")
    s3_cpu0, cpu0, t0 = _tree_cpu(s3_pid), time.process_time(), time.perf_counter()
    build_dataset_indexes([dataset], key_columns=KEYS, store=store)
    return time.perf_counter() - t0, time.process_time() - cpu0, _tree_cpu(s3_pid) - s3_cpu0


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200, help="friend files")
    parser.add_argument("--events", type=int, default=2_000, help="events per friend file")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=str(REPO / ".cache" / "bench-index"), help="dataset folder")
    parser.add_argument("--added-latency-ms", type=float, default=0.0, help="wait before every store request")
    args = parser.parse_args()
    friends = prepare(Path(args.data), args.files, args.events)
    default_threads = index_module.LOOKUP_THREADS
    variants = {"one at a time": 1, f"{default_threads} at once": default_threads}
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        server = start_seaweedfs(Path(tmp))
        try:
            s3 = S3Store(server.settings())
            for repeat in range(args.repeats):
                order = list(variants.items()) if repeat % 2 == 0 else list(reversed(variants.items()))
                for name, threads in order:
                    bucket = "index-" + uuid.uuid4().hex[:12]
                    s3.ensure_bucket(bucket)
                    store = FartherStore(s3, bucket, args.added_latency_ms / 1000)
                    runs.setdefault(("cold", name), []).append(load(friends, store, threads, server.process.pid))
                    runs.setdefault(("warm", name), []).append(load(friends, store, threads, server.process.pid))
        finally:
            index_module.LOOKUP_THREADS = default_threads
            stop_seaweedfs(server)
    print(f"friend dataset of {args.files} files x {args.events} events, SeaweedFS on 127.0.0.1 "
          f"(+{args.added_latency_ms:g} ms a request); medians of {args.repeats} repeats, alternating")
    print(f"{'cache':6s} {'lookups':16s} {'wall s':>8s} {'CPU s':>8s} {'S3 srv CPU s':>13s} {'wall ratio':>11s}")
    for cache in ("cold", "warm"):
        baseline = statistics.median(w for w, _, _ in runs[(cache, "one at a time")])
        for name in variants:
            wall, cpu, s3_cpu = (statistics.median(r[i] for r in runs[(cache, name)]) for i in range(3))
            print(f"{cache:6s} {name:16s} {wall:8.3f} {cpu:8.3f} {s3_cpu:13.3f} {baseline / wall:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
