"""Join-engine benchmarks (issue 2): every figure is a ratio against a baseline measured in the same run.

Parts (each can be run alone with --part):
  kernels  in-memory joins of N events (right side shuffled, 10% missing, 4 flat + 1 jagged column a side):
           aligned key comparison, the cached-index case (the primary file's own sorted key index against
           the friend's, as join_file matches a file; also with the primary unsorted), unsorted inner and left
           joins; baselines polars (pre-sorted packed uint64 key), duckdb (unsorted, carries lists), pyarrow's
           hash join (flat columns only), numpy argsort + searchsorted + awkward gather.
  files    end to end on one NanoAOD-like LZMA file: uproot read of the same primary and friend columns +
           Parquet write (no join) against `join_file` with an aligned, a reordered and a regrouped friend.
  command  the whole `servicex-joiner join` command (fresh process) on two primary files with a reordered
           friend regrouped over three files, against the pipeline a user would write by hand (fresh process:
           uproot reads, duckdb left-joins, pyarrow writes).
  memory   peak RSS above an idle process for `join_file` on a file and on a file 10x larger.

Medians of interleaved repeats with their spread (min-max). Usage:
  python benchmarks/bench_join.py [--part all|kernels|files|command|memory] [--repeats 5]
                                  [--kernel-events 10000000] [--file-events 1000000] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
PRIMARY_COLUMNS = ["Jet_pt", "Jet_eta", "Jet_phi", "MET_pt", "PV_npvs"]
FRIEND_COLUMNS = ["weight_up", "weight_down", "sys_index", "mva_score", "Jet_sf"]
KEYS = ["run", "luminosityBlock", "event"]


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run every case once per round, `repeats` rounds; wall seconds per case."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def describe(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} s ({min(times):.3f}-{max(times):.3f})"


def report(title: str, times: dict[str, list[float]], baseline: str, events: int) -> None:
    print(f"\n### {title}")
    print(f"| case | median wall (min-max) | events/s | ratio to {baseline} |")
    print("| --- | ---: | ---: | ---: |")
    base = statistics.median(times[baseline])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {describe(values)} | {events / median:,.0f} | {median / base:.2f} |")


# -- kernels ------------------------------------------------------------------------------------------------
def _kernel_tables(n: int) -> tuple[dict[str, object], dict[str, object]]:
    rng = np.random.default_rng(1)
    index = np.arange(n)
    run = np.ones(n, np.uint32)
    lumi = (index // 1000 + 1).astype(np.uint32)
    event = (10**8 + rng.permutation(n)).astype(np.uint64)
    counts = rng.poisson(5, n)
    jagged = ak.unflatten(rng.random(int(counts.sum())).astype(np.float32), counts)

    def side(rows: np.ndarray, seed: int) -> dict[str, object]:
        r = np.random.default_rng(seed)
        return {
            "run": run[rows], "luminosityBlock": lumi[rows], "event": event[rows],
            **{f"x{i}_{seed}": r.random(len(rows)).astype(np.float32) for i in range(4)},
            f"Jet_v{seed}": jagged[rows],
        }

    primary = side(index, 1)
    right_rows = rng.permutation(n)[: n * 9 // 10]
    return primary, side(right_rows, 2)


def _arrow(side: dict[str, object]) -> pa.Table:
    return pa.table({k: ak.to_arrow(v, extensionarray=False) if isinstance(v, ak.Array) else v
                     for k, v in side.items()})


def bench_kernels(n: int, repeats: int) -> None:
    import duckdb
    import polars as pl

    from joiner.gather import take_rows, take_rows_many
    from joiner.index import sort_order
    from joiner.merge import keys_equal, match_keys, partner_of_entries
    from joiner.spec import How

    primary, friend = _kernel_tables(n)
    left, right = _arrow(primary), _arrow(friend)
    left_keys = [left.column(k).to_numpy() for k in KEYS]
    right_keys = [right.column(k).to_numpy() for k in KEYS]
    right_body = right.drop_columns(KEYS)
    aligned_copy = [k.copy() for k in left_keys]
    order = sort_order(right_keys)
    sorted_keys = [k[order] for k in right_keys]
    sorted_body = right_body.take(pa.array(order))
    # the primary file's own key index (sorted keys + entries), built for its duplicate check: how
    # join_file matches a whole file against a friend's cached index
    primary_entries = sort_order(left_keys)
    primary_index_keys = [k[primary_entries] for k in left_keys]

    def cached(body: pa.Table | None) -> object:
        partner = partner_of_entries(primary_index_keys, primary_entries, sorted_keys, len(primary_entries))
        if body is None:
            return partner
        gathered = take_rows(body, partner)
        kept = left
        for name in gathered.column_names:
            kept = kept.append_column(name, gathered.column(name))
        return kept

    def ours(keys: list[np.ndarray], body: pa.Table, how: How) -> pa.Table:
        match = match_keys(left_keys, keys, how)
        # both sides' rows copied together, as joiner.join does (a left join's left side is not copied)
        kept, gathered = take_rows_many([(left, match.left_rows), (body, match.right_rows)])
        for name in gathered.column_names:
            kept = kept.append_column(name, gathered.column(name))
        return kept

    packed_left = pl.DataFrame({"k": (left_keys[1].astype(np.uint64) << np.uint64(40)) | left_keys[2]})
    packed_right = pl.DataFrame({"k": (sorted_keys[1].astype(np.uint64) << np.uint64(40)) | sorted_keys[2]})
    packed_right = packed_right.with_columns(pl.Series("row", np.arange(len(sorted_keys[0])))).set_sorted("k")
    packed_left_sorted = packed_left.sort("k")
    flat_right = right.drop_columns([c for c in right.column_names if c.startswith("Jet_")])
    flat_left = left.drop_columns([c for c in left.column_names if c.startswith("Jet_")])
    connection = duckdb.connect()
    connection.register("l", left)
    connection.register("r", right)

    def numpy_baseline() -> object:
        packed_r = (right_keys[1].astype(np.uint64) << np.uint64(40)) | right_keys[2]
        packed_l = (left_keys[1].astype(np.uint64) << np.uint64(40)) | left_keys[2]
        order_r = np.argsort(packed_r)
        position = np.clip(np.searchsorted(packed_r[order_r], packed_l), 0, len(packed_r) - 1)
        found = packed_r[order_r][position] == packed_l
        rows = np.where(found, order_r[position], -1)
        return ak.from_arrow(right_body.column("Jet_v2"))[np.maximum(rows, 0)]

    runs = {
        "aligned keys (ours)": lambda: keys_equal(left_keys, aligned_copy),
        "cached indexes, keys only (ours)": lambda: cached(None),
        "friend index cached, primary unsorted, keys only (ours)": lambda: match_keys(
            left_keys, sorted_keys, How.LEFT),
        "unsorted, keys only (ours)": lambda: match_keys(left_keys, right_keys, How.LEFT),
        "cached indexes, left (ours)": lambda: cached(sorted_body),
        "unsorted left (ours)": lambda: ours(right_keys, right_body, How.LEFT),
        "unsorted inner (ours)": lambda: ours(right_keys, right_body, How.INNER),
        "polars, pre-sorted packed key": lambda: packed_left_sorted.join(packed_right, on="k", how="left"),
        "duckdb left join (lists)": lambda: connection.sql(
            "SELECT * FROM l LEFT JOIN r USING (run, luminosityBlock, event)").to_arrow_table(),
        "pyarrow hash join (flat only)": lambda: flat_left.join(flat_right, KEYS, join_type="left outer"),
        "numpy argsort+searchsorted+awkward": numpy_baseline,
    }
    times = interleaved(runs, repeats)
    report(f"In-memory joins, {n:,} events (right shuffled, 10% missing, 4 flat + 1 jagged a side)",
           times, "duckdb left join (lists)", n)


# -- files ----------------------------------------------------------------------------------------------------
def _dataset(data: Path, name: str, files: int, events: int) -> tuple[list[Path], dict[str, list[Path]]]:
    from joiner.datagen import generate_dataset, generate_friends

    directory = data / f"{name}-{files}x{events}"
    stamp = directory / "done"
    kinds = {"aligned": ("aligned", 0.0, 0), "reordered": ("reordered", 0.1, 0), "regrouped": ("regrouped", 0.1, 3)}
    if not stamp.exists():
        print(f"generating {files} x {events:,} events in {directory} ...", flush=True)
        _, keys = generate_dataset(directory, n_files=files, events_per_file=events, seed=1)
        for kind, drop, n_files in kinds.values():
            generate_friends(keys, directory, kind=kind, drop_fraction=drop, n_files=n_files or 3, seed=2)
        stamp.write_text("ok")
    primaries = sorted(directory.glob("nano_*.root"))
    friends = {kind: sorted(directory.glob(f"{kind}_*.root")) for kind in kinds}
    return primaries, friends


def _spec(primaries: list[Path], friend_files: list[Path]) -> object:
    from joiner.spec import parse_spec

    return parse_spec({
        "primary": {"files": [str(p) for p in primaries], "columns": PRIMARY_COLUMNS},
        "friends": [{"name": "f", "files": [str(f) for f in friend_files], "tree": "Friends",
                     "columns": FRIEND_COLUMNS, "prefix": "f_"}],
    })


def bench_files(data: Path, events: int, repeats: int) -> None:
    import pyarrow.parquet as pq
    import uproot

    from joiner.engine import join_file, resolve_friend_indexes
    from joiner.sources import awkward_to_arrow

    primaries, friends = _dataset(data, "files", 1, events)
    primary = primaries[0]
    out = Path(tempfile.mkdtemp())
    specs = {kind: _spec(primaries, friends[kind]) for kind in friends}
    indexes = {kind: resolve_friend_indexes(spec) for kind, spec in specs.items()}  # the cached case

    def baseline(executor: object = None) -> None:
        options = {"decompression_executor": executor} if executor is not None else {}
        events_table = uproot.open(primary)["Events"].arrays([*KEYS, "nJet", *PRIMARY_COLUMNS], **options)
        table = awkward_to_arrow(events_table, [*KEYS, "nJet", *PRIMARY_COLUMNS])
        friend = uproot.open(friends["aligned"][0])["Friends"].arrays(FRIEND_COLUMNS, **options)
        friend_table = awkward_to_arrow(friend, FRIEND_COLUMNS)
        for name in FRIEND_COLUMNS:
            table = table.append_column("f_" + name, friend_table.column(name))
        pq.write_table(table, out / "baseline.parquet", compression="zstd")

    threads = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    runs: dict[str, Callable[[], object]] = {
        "read + write, no join (baseline)": baseline,
        "read + write, no join, decompression threads like join_file": lambda: baseline(threads),
    }
    for kind in friends:
        runs[f"join_file, {kind} friend"] = (
            lambda kind=kind: join_file(specs[kind], str(primary), out / f"{kind}.parquet", indexes=indexes[kind])
        )
    times = interleaved(runs, repeats)
    report(f"One NanoAOD-like LZMA file of {events:,} events, 5 primary + 5 friend columns",
           times, "read + write, no join (baseline)", events)


HAND_PIPELINE = textwrap.dedent(
    """
    import sys, duckdb, uproot, pyarrow.parquet as pq
    from joiner.sources import awkward_to_arrow
    primaries, friends, out = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3]
    keys = ["run", "luminosityBlock", "event"]
    pcols, fcols = {pcols!r}, {fcols!r}
    friend = pa_friend = None
    import pyarrow as pa
    pa_friend = pa.concat_tables([awkward_to_arrow(uproot.open(f)["Friends"].arrays(keys + fcols), keys + fcols)
                                  for f in friends])
    con = duckdb.connect()
    con.register("f", pa_friend)
    for i, path in enumerate(primaries):
        table = awkward_to_arrow(uproot.open(path)["Events"].arrays(keys + ["nJet"] + pcols), keys + ["nJet"] + pcols)
        con.register("p", table)
        joined = con.execute("SELECT * FROM p LEFT JOIN f USING (run, luminosityBlock, event)").to_arrow_table()
        pq.write_table(joined, f"{{out}}/hand_{{i}}.parquet", compression="zstd")
    """
)


def bench_command(data: Path, events_total: int, repeats: int) -> None:
    primaries, friends = _dataset(data, "command", 2, events_total // 2)
    spec_path = Path(tempfile.mkdtemp()) / "spec.yaml"
    import yaml

    yaml.safe_dump({
        "primary": {"files": [str(p) for p in primaries], "columns": PRIMARY_COLUMNS},
        "friends": [{"name": "f", "files": [str(f) for f in friends["regrouped"]], "tree": "Friends",
                     "columns": FRIEND_COLUMNS, "prefix": "f_"}],
    }, spec_path.open("w"))
    script = Path(tempfile.mkdtemp()) / "hand.py"
    script.write_text(HAND_PIPELINE.format(pcols=PRIMARY_COLUMNS, fcols=FRIEND_COLUMNS))
    out_ours, out_hand = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    cache = Path(tempfile.mkdtemp())
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    ours = [sys.executable, "-m", "transformer.cli", "join", "--spec", str(spec_path), "--output", str(out_ours),
            "--no-progress"]
    hand = [sys.executable, str(script), ",".join(map(str, primaries)), ",".join(map(str, friends["regrouped"])),
            str(out_hand)]
    subprocess.run(ours, check=True, env=env, capture_output=True)  # warm the index cache
    runs = {
        "hand pipeline: uproot + duckdb + pyarrow (baseline)": lambda: subprocess.run(
            hand, check=True, env=env, capture_output=True),
        "servicex-joiner join (index cached)": lambda: subprocess.run(ours, check=True, env=env, capture_output=True),
    }
    times = interleaved(runs, repeats)
    report(f"Whole command, fresh processes: {events_total:,} events in 2 files, friend regrouped over 3 files",
           times, "hand pipeline: uproot + duckdb + pyarrow (baseline)", events_total)


MEMORY_PROBE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from joiner.spec import parse_spec
    from joiner.engine import join_file, resolve_friend_indexes

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    primary, friend, out = sys.argv[1:4]
    spec = parse_spec({{"primary": {{"files": [primary], "columns": {pcols!r}}},
                       "friends": [{{"name": "f", "files": [friend], "tree": "Friends", "columns": {fcols!r},
                                    "prefix": "f_"}}]}})
    def reset():
        # a process started by fork inherits its parent's peak; reset the peak (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return status("VmRSS")

    idle = reset()
    indexes = resolve_friend_indexes(spec)  # keys only, once per dataset (a worker keeps it for a request)
    indexes["f"].check_duplicates(spec.duplicates)
    index_peak = status("VmHWM") - idle
    idle = reset()
    join_file(spec, primary, Path(out), chunk_entries=100_000, indexes=indexes)
    print(status("VmHWM") - idle, index_peak)
    """
)


def bench_memory(data: Path, events: int) -> None:
    script = Path(tempfile.mkdtemp()) / "probe.py"
    script.write_text(MEMORY_PROBE.format(pcols=PRIMARY_COLUMNS, fcols=FRIEND_COLUMNS))
    print("\n### Peak RSS above an idle process (join_file, chunk 100,000 entries, aligned friend)")
    print("| events in the file | join_file | building the friend's key index (keys only, per dataset) |")
    print("| ---: | ---: | ---: |")
    for size in (events // 10, events):
        primaries, friends = _dataset(data, "memory", 1, size)
        done = subprocess.run(
            [sys.executable, str(script), str(primaries[0]), str(friends["aligned"][0]),
             str(Path(tempfile.mkdtemp()) / "o.parquet")],
            check=True, capture_output=True, text=True,
        )
        join_kb, index_kb = (int(v) for v in done.stdout.split())
        print(f"| {size:,} | {join_kb / 1024:.0f} MB | {index_kb / 1024:.0f} MB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="all", choices=["all", "kernels", "files", "command", "memory"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kernel-events", type=int, default=10_000_000)
    parser.add_argument("--file-events", type=int, default=1_000_000)
    parser.add_argument("--data", default=str(REPO / ".cache" / "bench-data"))
    args = parser.parse_args()
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}; repeats {args.repeats}")
    if args.part in ("all", "kernels"):
        bench_kernels(args.kernel_events, args.repeats)
    if args.part in ("all", "files"):
        bench_files(data, args.file_events, args.repeats)
    if args.part in ("all", "command"):
        bench_command(data, args.file_events, args.repeats)
    if args.part in ("all", "memory"):
        bench_memory(data, args.file_events)



if __name__ == "__main__":
    main()
