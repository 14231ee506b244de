"""Helpers of the reliability tests: inputs with checkable values, the end-state invariant, process trees.

Inputs are NanoAOD-like files from `joiner.datagen` (keys, Jet/Muon collections, MET) and friends whose
columns are functions of the event key (`joiner.datagen.friend_values`), so every joined value can be
checked without trusting the engine. `check_request` asserts the invariant of every fault case: each
input file ends with exactly one report and, for a success, exactly one object whose rows pair each
primary event with its own friend values (and inference values, when the spec has them); the request's
bucket holds nothing else.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pika
import pyarrow as pa
import pyarrow.parquet as pq
import uproot

from joiner.datagen import KeyBlock, friend_values, generate_friends, generate_nanoaod, write_tree
from transformer.naming import object_name
from transformer.storage.s3 import S3Store

KEYS = ("run", "luminosityBlock", "event")
PRIMARY_COLUMNS = ("MET_pt", "MET_phi", "nJet", "Jet_pt")
FRIEND_COLUMNS = ("weight_up", "Jet_sf")
FRIEND_PREFIX = "sys_"
AFFINE_MODEL = "event_affine"  # tests/models: OUTPUT__0 = (x0 + 2*x1 + version - 1, x0*x1)


def fast_compression() -> Any:
    """ZLIB level 1: quick to write and read, as the tests want."""
    return uproot.ZLIB(1)


def make_primaries(directory: Path, count: int, events: int, *, seed: int = 1, first_file: int = 0) -> list[Path]:
    """`count` NanoAOD-like files of `events` events each with disjoint keys."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(first_file, first_file + count):
        path = directory / f"nano_{number}.root"
        generate_nanoaod(path, events, first_index=number * events, seed=seed, compression=fast_compression())
        paths.append(path)
    return paths


def read_keys(path: Path) -> KeyBlock:
    """The keys and Jet counts of a primary file, in file order."""
    arrays = uproot.open(path)["Events"].arrays([*KEYS, "nJet"], library="np")
    return KeyBlock(arrays["run"], arrays["luminosityBlock"], arrays["event"], arrays["nJet"].astype(np.uint32))


def make_friends(primaries: Sequence[Path], directory: Path, *, seed: int = 2) -> list[Path]:
    """One reordered friend file per primary (tree `Friends`, every event present)."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = [read_keys(p) for p in primaries]
    return generate_friends(keys, directory, kind="reordered", seed=seed, compression=fast_compression())


def rewrite_primary(source: Path, target: Path, change: Callable[[dict[str, ak.Array]], dict[str, ak.Array]]) -> None:
    """Copy a primary file's `Events` through `change` (drop a branch, duplicate a key, keep no rows)."""
    events = uproot.open(source)["Events"].arrays(library="ak")
    columns = {name: events[name] for name in events.fields if not name.startswith("n")}
    write_tree(target, "Events", change(columns), compression=fast_compression())


def write_plain_friend(path: Path, keys: KeyBlock) -> None:
    """A friend TTree with no compression (its baskets hold the raw big-endian values), one basket each."""
    columns: dict[str, Any] = {"run": keys.run, "luminosityBlock": keys.luminosityBlock, "event": keys.event}
    values = friend_values(keys)
    columns["weight_up"] = values["weight_up"]
    with uproot.recreate(path, compression=None) as out:
        out.mktree("Friends", {name: np.asarray(v).dtype for name, v in columns.items()})
        out["Friends"].extend(columns)


def swap_friend_keys_in_place(path: Path, keys: KeyBlock, first: int, second: int) -> None:
    """Tamper with a `write_plain_friend` file: swap the `event` numbers of two entries in its basket.

    The size and ROOT UUID stay the same, so a cached key index of the file still looks valid: only the
    integrity check, which compares the keys read with the rows against the keys they were paired with,
    can notice.
    """
    data = bytearray(path.read_bytes())
    raw = keys.event.astype(">u8").tobytes()
    where = data.find(raw)
    if where < 0 or data.find(raw, where + 1) >= 0:
        raise AssertionError(f"the event basket of {path} is not found exactly once")
    a, b = where + 8 * first, where + 8 * second
    data[a : a + 8], data[b : b + 8] = data[b : b + 8], data[a : a + 8]
    path.write_bytes(bytes(data))


def spec_document(
    friend_files: Sequence[Path | str], *, inference: bool = False, columns: Sequence[str] = PRIMARY_COLUMNS,
    friend_columns: Sequence[str] = FRIEND_COLUMNS,
) -> dict[str, Any]:
    """The join spec of these tests: the cms key, one left-joined friend, optionally the affine model."""
    spec: dict[str, Any] = {
        "primary": {"columns": list(columns)},
        "key": "cms",
        "friends": [
            {"name": "sys", "files": [str(f) for f in friend_files], "tree": "Friends",
             "columns": list(friend_columns), "prefix": FRIEND_PREFIX}
        ] if friend_files else [],
    }  # fmt: skip
    if inference:
        spec["inference"] = [{
            "model": AFFINE_MODEL, "version": 1, "inputs": {"INPUT__0": ["MET_pt", "MET_phi"]},
            "outputs": {"OUTPUT__0": "met_affine"},
        }]  # fmt: skip
    return spec


def write_spec_file(path: Path, friend_files: Sequence[Path | str], **options: Any) -> Path:
    """Write `spec_document(...)` as JSON."""
    path.write_text(json.dumps(spec_document(friend_files, **options)))
    return path


# ---------------------------------------------------------------------------------------------------------
# The invariant


@dataclass(frozen=True)
class Expect:
    """What one input file must end as.

    Attributes:
        path: the input path sent in the task.
        status: `success`, `failure`, or `either` (a fault that may go both ways: then a success must
            still be a correct object, and a failure leaves none).
        rows: for a success, the rows the object must hold (None: those of the primary file).
        inference: whether the spec adds the affine model's columns.
    """

    path: Path
    status: str = "success"
    rows: int | None = None
    inference: bool = False


@dataclass
class Verdict:
    """What `check_request` found."""

    successes: int
    failures: int
    objects: int
    reports: int

    def summary(self) -> str:
        return (
            f"{self.reports} report(s) for {self.reports} file(s): {self.successes} success "
            f"(content verified), {self.failures} failure; {self.objects} object(s), nothing else"
        )


def check_request(
    store: S3Store, request_id: str, reports: Sequence[Mapping[str, Any]], expected: Mapping[int, Expect]
) -> Verdict:
    """Assert the invariant (module docstring) for one request; return the counts."""
    by_id: dict[int, list[Mapping[str, Any]]] = {}
    for report in reports:
        by_id.setdefault(int(report["file-id"]), []).append(report)
    assert sorted(by_id) == sorted(expected), f"reports for files {sorted(by_id)}, expected {sorted(expected)}"
    duplicated = {fid: len(r) for fid, r in by_id.items() if len(r) != 1}
    assert not duplicated, f"files reported more than once: {duplicated}"
    names = sorted(store.list_names(request_id))
    wanted: list[str] = []
    successes = failures = 0
    for file_id, expect in expected.items():
        report = by_id[file_id][0]
        status = str(report["status"])
        if expect.status != "either":
            assert status == expect.status, f"file {file_id} ({expect.path.name}): {status}, expected {expect.status}"
        if status == "failure":
            failures += 1
            assert report["s3-object-name"] == "none", report
            continue
        successes += 1
        name = str(report["s3-object-name"])
        assert name == object_name(str(expect.path), parquet=True), (name, expect.path)
        assert name in names, f"file {file_id}: reported object {name} is not in the bucket {names}"
        wanted.append(name)
        data = store.get_bytes(request_id, name)
        assert data is not None
        assert len(data) == int(report["total-bytes"]), f"file {file_id}: size {len(data)} != total-bytes"
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == int(report["total-events"]), (table.num_rows, report["total-events"])
        check_content(table, expect)
    assert names == sorted(wanted), f"bucket {request_id} holds {names}, expected exactly {sorted(wanted)}"
    return Verdict(successes, failures, len(names), len(reports))



def check_content(table: pa.Table, expect: Expect) -> None:
    """Every row pairs a primary event with its own values: keys in primary order, primary columns equal to
    the file's, friend columns equal to `friend_values` of that row's key, inference columns equal to the
    model's formula on that row's inputs."""
    primary = uproot.open(expect.path)["Events"].arrays([*KEYS, *PRIMARY_COLUMNS], library="ak")
    rows = len(primary) if expect.rows is None else expect.rows
    assert table.num_rows == rows, f"{expect.path.name}: {table.num_rows} rows, expected {rows}"
    if rows == 0:  # the schema is compared by the caller; no values to check
        return
    out = {name: table.column(name).to_pylist() for name in table.column_names}
    for key in KEYS:
        want = ak.to_numpy(primary[key]).astype(np.uint64)
        np.testing.assert_array_equal(np.asarray(out[key], dtype=np.uint64), want)
    np.testing.assert_array_equal(np.asarray(out["MET_pt"], dtype=np.float32), ak.to_numpy(primary["MET_pt"]))
    assert ak.all(ak.Array(out["Jet_pt"]) == primary["Jet_pt"]), "Jet_pt differs from the primary's"
    keys = KeyBlock(
        np.asarray(out["run"], dtype=np.uint32), np.asarray(out["luminosityBlock"], dtype=np.uint32),
        np.asarray(out["event"], dtype=np.uint64), np.asarray(out["nJet"], dtype=np.uint32),
    )
    values = friend_values(keys)
    assert all(out[f"{FRIEND_PREFIX[:-1]}_matched"]), "a row of the friend is unmatched"
    np.testing.assert_array_equal(np.asarray(out[FRIEND_PREFIX + "weight_up"], dtype=np.float32), values["weight_up"])
    got_sf = ak.Array(out[FRIEND_PREFIX + "Jet_sf"])
    assert ak.all(ak.num(got_sf) == ak.num(primary["Jet_pt"])), "Jet_sf lists do not follow the Jet counts"
    np.testing.assert_array_equal(ak.to_numpy(ak.flatten(got_sf)), ak.to_numpy(ak.flatten(values["Jet_sf"])))
    if expect.inference:
        x0 = np.asarray(out["MET_pt"], dtype=np.float32).astype(np.float64)
        x1 = np.asarray(out["MET_phi"], dtype=np.float32).astype(np.float64)
        np.testing.assert_allclose(np.asarray(out["met_affine_0"], dtype=np.float64),
                                   (x0 + 2.0 * x1).astype(np.float32), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out["met_affine_1"], dtype=np.float64),
                                   (x0 * x1).astype(np.float32), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Processes and queues


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    """Direct children of a process (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent_of(int(entry)) == pid:
            found.append(int(entry))
    return sorted(found)


def cmdline(pid: int) -> str:
    """A process's command line, spaces between arguments ('' if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children(current))
    return pids


def transform_pids(worker_pid: int) -> list[int]:
    """The worker's transform processes: the children of its zygote (or of its multiprocessing fork server)."""
    servers = children(worker_pid)  # the zygote or the fork server (and a resource tracker, childless)
    return [child for server in servers for child in children(server)]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.05) -> Any:
    """Poll until `condition()` is truthy; return its value (raises TimeoutError naming `what`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen within {timeout_s} s")
        time.sleep(poll_s)


def queue_state(url: str, queue: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of a queue, or None if it does not exist."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        try:
            frame = channel.queue_declare(queue=queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return None
        return int(frame.method.message_count), int(frame.method.consumer_count)
    finally:
        if connection.is_open:
            connection.close()


def publish_raw(
    url: str, queue: str, body: bytes, *, headers: Mapping[str, Any] | None, content_type: str | None,
    content_encoding: str | None = "utf-8",
) -> None:
    """Publish one message as it is, to the default exchange with the queue's name as routing key."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.basic_publish(
            exchange="", routing_key=queue, body=body,
            properties=pika.BasicProperties(
                headers=dict(headers) if headers is not None else None, content_type=content_type,
                content_encoding=content_encoding, delivery_mode=2,
            ),
        )  # fmt: skip
    finally:
        connection.close()
