"""CPU a worker spends starting: every process of it, until its transform process waits for the first file.

Starts `servicex-joiner worker` on an empty queue (SeaweedFS and RabbitMQ as in `bench_worker.py`), waits
until its transform process has started and settled, and reads the CPU (user+system, `/proc`) of each
process in the worker's tree: the consumer, the zygote or multiprocessing's fork server (and its resource
tracker), the transform process. Each worker's start-up is paid once per worker, so it is what a second
worker on the same cores adds (the ×2 run of `bench_worker.py`) and what a one-CPU pod waits for before
its first file. With `--against DIR`, a second checkout (`git worktree add DIR <rev>`) is started in
turn with this one, for an A/B in one run. Needs RabbitMQ on 127.0.0.1:5672.

Usage: python benchmarks/bench_worker_start.py [--starts N] [--against DIR]
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import worker_support  # noqa: E402
from tests.fixtures.rabbitmq import RABBIT_URL, delete_queue  # noqa: E402
from tests.fixtures.seaweedfs import free_port, start_seaweedfs, stop_seaweedfs  # noqa: E402

SETTLE_S = 1.5  # after the transform process's start: its handler is built and it waits


def process_tree_cpu(root: int) -> list[tuple[str, float]]:
    """(role, CPU seconds) of `root` and its descendants, parents first."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    found: list[tuple[str, float]] = []
    todo = [(root, 0)]
    while todo:
        pid, depth = todo.pop(0)
        children = sorted(child for child, parent in parents.items() if parent == pid)
        found.append((_role(depth, commands.get(pid, "")), cpu.get(pid, 0.0)))
        todo.extend((child, depth + 1) for child in children)
    return found


def _role(depth: int, command: str) -> str:
    if depth == 0:
        return "consumer"
    if depth > 1:
        return "transform process"
    if "resource_tracker" in command:
        return "resource tracker"
    return "fork server" if "forkserver" in command else "zygote"


def start_once(checkout: Path, spec: Path, env: dict[str, str], work: Path) -> list[tuple[str, float]]:
    """Start one worker of `checkout` on an empty queue; its processes' CPU once it waits for a file."""
    worker_support.REPO = checkout  # the worker runs `python -m transformer.cli` in this directory
    request_id = str(uuid.uuid4())
    worker = worker_support.WorkerProcess(request_id=request_id, rabbit_url=RABBIT_URL, spec=spec, env=env,
                                          log=work / f"{request_id}.log", probe_port=free_port())
    try:
        deadline = time.monotonic() + 60
        while "transform process pid" not in worker.log():
            if time.monotonic() > deadline or worker.process.poll() is not None:
                raise RuntimeError(f"the worker did not start; see {work / (request_id + '.log')}")
            time.sleep(0.05)
        time.sleep(SETTLE_S)
        return process_tree_cpu(worker.process.pid)
    finally:
        worker.terminate()
        delete_queue(RABBIT_URL, f"transformer-{request_id}")


def main() -> int:
    """Start the workers in turn and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="starts of each checkout (alternated)")
    parser.add_argument("--against", metavar="DIR", default=None, help="another checkout, started in turn")
    args = parser.parse_args()
    checkouts = {"this checkout": REPO}
    if args.against:
        checkouts = {f"{args.against}": Path(args.against).resolve(), **checkouts}
    for checkout in checkouts.values():  # as the image's install does
        for package in ("joiner", "transformer"):
            compileall.compile_dir(checkout / package, quiet=1)
    with tempfile.TemporaryDirectory(prefix="bench-worker-start-") as tmp:
        work = Path(tmp)
        spec = work / "spec.json"
        spec.write_text('{"primary": {"columns": ["Jet_pt"]}, "key": "cms", '  # read only when a file comes
                        '"friends": [{"name": "sf", "files": ["/data/friend_*.root"], "columns": ["Jet_sf"]}]}')
        server = start_seaweedfs(work)
        env = {**server.env(), "JOINER_THREADS": "1"}
        totals: dict[str, list[float]] = {name: [] for name in checkouts}
        roles: dict[str, dict[str, list[float]]] = {name: {} for name in checkouts}
        try:
            for start in range(args.starts):
                order = list(checkouts) if start % 2 == 0 else list(reversed(checkouts))
                for name in order:
                    processes = start_once(checkouts[name], spec, env, work)
                    totals[name].append(sum(cpu for _, cpu in processes))
                    for role, cpu in processes:
                        roles[name].setdefault(role, []).append(cpu)
                    print(f"start {start + 1}, {name}: " + ", ".join(f"{role} {cpu:.2f}" for role, cpu in processes),
                          flush=True)
        finally:
            stop_seaweedfs(server)
    print(f"CPU-s of a worker's start-up, medians of {args.starts} starts (JOINER_THREADS=1):")
    for name in checkouts:
        parts = ", ".join(f"{role} {statistics.median(values):.2f}" for role, values in roles[name].items())
        print(f"  {name}: {statistics.median(totals[name]):.2f} "
              f"(min {min(totals[name]):.2f}, max {max(totals[name]):.2f}); {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
