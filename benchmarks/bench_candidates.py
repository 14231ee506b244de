"""The friend rows a primary chunk may match (`DatasetIndex.candidates`), and the friend's duplicate check.

A regrouped friend spreads every primary file's events over all of its files, so each chunk of a primary
file overlaps every fragment of the friend's index, and takes a small slice of each. This times that
lookup alone, in memory, on generated CMS keys: `--fragments` fragments of `--entries` sorted keys each
(the friend), and chunks of `--chunk` keys drawn from the same events (the primary). It also times the
duplicate check a worker runs once per friend it loads (`DatasetIndex.check_duplicates`), for that regrouped
friend and for the same events laid out as the primary's files are (each file its own range of events: an
aligned or reordered friend). Run it in two checkouts to compare them (`git worktree add DIR <rev>`;
`python DIR/benchmarks/bench_candidates.py`).

Usage: python benchmarks/bench_candidates.py [--fragments N] [--entries N] [--chunk N] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from joiner.index import DatasetIndex, KeyFragment
from joiner.sources import FileIdentity
from joiner.spec import DuplicatePolicy


def friend_index(
    fragments: int, entries: int, rng: np.random.Generator, *, regrouped: bool = True
) -> tuple[DatasetIndex, np.ndarray]:
    """A friend's index and all of its event numbers: regrouped (every event in a random fragment), or
    each fragment a consecutive range of events."""
    events = np.sort(rng.choice(10**10, fragments * entries, replace=False)).astype(np.uint64)
    where = (rng.permutation(len(events)) if regrouped else np.arange(len(events))).reshape(fragments, entries)
    parts = []
    for position, rows in enumerate(where):
        event = np.sort(events[rows])
        keys = [np.ones(entries, np.uint32), (event // 1000).astype(np.uint32), event]
        parts.append(KeyFragment(
            identity=FileIdentity(f"friend_{position}.root", 1, f"uuid-{position}"), tree="Friends",
            key_columns=("run", "luminosityBlock", "event"), num_entries=entries, keys=keys,
            entries=np.arange(entries, dtype=np.int64), first_key=None, last_key=None,
        ))
    return DatasetIndex("friend", [f"friend_{i}.root" for i in range(fragments)], parts), events


def main() -> int:
    """Time `candidates` for consecutive chunks of the primary's keys."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fragments", type=int, default=100)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=250_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(4)
    index, events = friend_index(args.fragments, args.entries, rng)
    times, found = [], 0
    for repeat in range(args.repeats):
        start = (repeat * args.chunk) % (len(events) - args.chunk)
        event = events[start:start + args.chunk]
        chunk = [np.ones(len(event), np.uint32), (event // 1000).astype(np.uint32), event]
        t0 = time.perf_counter()
        candidates = index.candidates(chunk)
        times.append(time.perf_counter() - t0)
        found = len(candidates)
    print(f"regrouped friend: {args.fragments} fragments x {args.entries} keys; chunks of {args.chunk} keys "
          f"({found} candidate rows each)")
    print(f"candidates(): median {1000 * statistics.median(times):.1f} ms of {args.repeats} chunks "
          f"(min {1000 * min(times):.1f}, max {1000 * max(times):.1f})")
    in_ranges, _ = friend_index(args.fragments, args.entries, rng, regrouped=False)
    layouts = {"regrouped": index, "in file ranges": in_ranges}
    for layout, friend in layouts.items():
        checks = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            friend.check_duplicates(DuplicatePolicy.ERROR)
            checks.append(time.perf_counter() - t0)
        print(f"check_duplicates(), {layout}: median {1000 * statistics.median(checks):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
