"""End to end with the real servicex client: `deliver()` with `JoinQuery` through a stand-in ServiceX App.

Processes: SeaweedFS (object store), RabbitMQ, our code generator (`servicex-joiner serve`), the stand-in
App (`tests.standin_app`), and the worker it starts per request (`servicex-joiner worker`). The client
submits, the App asks our code generator for the code and queues real Celery tasks, the worker joins and
uploads Parquet and reports, and the client polls, downloads and caches. Checked: the joined content, the
progress bars, a failed file reported as the client reports failures, a second identical request served
from the client's cache, an outer join as two samples read back as one array, and a refused spec.
"""

from __future__ import annotations

import gc
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
from servicex import dataset, deliver
from servicex.servicex_client import ReturnValueException

from tests.fixtures.seaweedfs import S3Server
from tests.fixtures.servicex_stack import JoinStack, start_join_stack, stop_join_stack, write_client_config
from tests.worker_support import KEYS, truncated_copy
from transformer.client.loader import load_joined
from transformer.client.query import JoinQuery
from transformer.client.samples import join_request, sample_names

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # deliver() makes its own client, whose cache database (TinyDB) it never closes, and runs in an event
    # loop of its own (make_it_sync) that it never closes either, nor the loop's self-pipe sockets
    pytest.mark.filterwarnings(r"ignore:Exception ignored in.*db\.json:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in.*BaseEventLoop\.__del__:pytest.PytestUnraisableExceptionWarning"
    ),
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in.*socket\.socket fd=\d+, family=1,:pytest.PytestUnraisableExceptionWarning"
    ),
]

PRIMARIES = ("nano_dy.root", "nano_dimuon.root")


def write_friend(primary: Path, path: Path, *, drop_every: int, extra_events: int = 0, seed: int = 3) -> None:
    """A friend of `primary`: its keys reordered, every `drop_every`-th event missing, `extra_events` events
    that the primary does not have; column `sf` = (event % 1000) / 1000."""
    keys = uproot.open(primary)["Events"].arrays(list(KEYS), library="np")
    keep = np.arange(len(keys["event"])) % drop_every != 0
    columns = {name: keys[name][keep] for name in KEYS}
    if extra_events:
        top = int(keys["event"].max())
        for name in ("run", "luminosityBlock"):
            columns[name] = np.concatenate([columns[name], np.full(extra_events, keys[name][0])])
        new = np.arange(top + 1, top + 1 + extra_events, dtype=keys["event"].dtype)
        columns["event"] = np.concatenate([columns["event"], new])
    order = np.random.default_rng(seed).permutation(len(columns["event"]))
    columns = {name: values[order] for name, values in columns.items()}
    columns["sf"] = (columns["event"] % 1000).astype(np.float32) / 1000
    with uproot.recreate(path) as out:  # a TTree, as friend trees are (a dict assignment writes an RNTuple)
        out.mktree("Events", {name: values.dtype for name, values in columns.items()})
        out["Events"].extend(columns)


def primary_rows(path: Path) -> dict[tuple[int, ...], dict[str, Any]]:
    """(run, luminosityBlock, event) -> the primary's nMuon and Muon_pt."""
    arrays = uproot.open(path)["Events"].arrays([*KEYS, "nMuon", "Muon_pt"])
    return {
        tuple(int(row[k]) for k in KEYS): {"nMuon": int(row["nMuon"]), "Muon_pt": list(row["Muon_pt"])}
        for row in arrays.to_list()
    }


def deliver_request(request: dict[str, Any], config: Path) -> dict[str, Any]:
    """`servicex.deliver()` against the stand-in App named in `config`."""
    result: dict[str, Any] = deliver(request, config_path=str(config), servicex_name="standin")
    return result


@pytest.fixture(autouse=True)
def _collect_what_deliver_leaves() -> Iterator[None]:
    """Collect, within each test, what `deliver()` leaves unclosed (see the warning filters above): its
    thread must end (its event loop goes with it) before the garbage is collected."""
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        if thread.name.startswith("ThreadPoolExecutor"):
            thread.join(timeout=10)
    gc.collect()


def key_of(row: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(row[k]) for k in KEYS)


@pytest.fixture
def inputs(tmp_path: Path, data_dir: Path) -> dict[str, Path]:
    """Two real NanoAOD files, their left-join friends (some events missing), an outer-join friend with
    extra events, and a corrupt file."""
    (tmp_path / "in").mkdir()
    (tmp_path / "friends").mkdir()
    files: dict[str, Path] = {}
    for name in PRIMARIES:
        files[name] = Path(shutil.copy(data_dir / name, tmp_path / "in" / name))
        write_friend(files[name], tmp_path / "friends" / f"sf_{name}", drop_every=4)
    files["outer_friend"] = tmp_path / "friends" / "outer" / "sf_extra.root"
    files["outer_friend"].parent.mkdir()
    write_friend(files["nano_dy.root"], files["outer_friend"], drop_every=5, extra_events=7)
    files["corrupt"] = tmp_path / "in" / "corrupt.root"
    truncated_copy(data_dir / "nano_dy.root", files["corrupt"])
    return files


@pytest.fixture
def stack(tmp_path: Path, s3_server: S3Server, rabbitmq_url: str) -> Iterator[JoinStack]:
    """Code generator and stand-in App; friends may be read from this test's directory only."""
    running = start_join_stack(
        tmp_path / "stack", s3=s3_server, rabbit_url=rabbitmq_url, allowed_locations=f"{tmp_path}/"
    )
    yield running
    app_code, codegen_code = stop_join_stack(running)
    assert (app_code, codegen_code) == (0, 0), running.app.log() + running.codegen.log()


@pytest.fixture
def client_config(tmp_path: Path, stack: JoinStack, fast_client_polling: None) -> Path:
    config = tmp_path / "client" / "servicex.yaml"
    config.parent.mkdir()
    write_client_config(config, tmp_path / "client" / "cache", stack.app_url)
    return config


def left_spec(tmp_path: Path) -> dict[str, Any]:
    return {
        "key": "cms",
        "primary": {"columns": ["nMuon", "Muon_pt"]},
        "friends": [
            {
                "name": "sys",
                "files": [str(tmp_path / "friends" / "sf_*.root")],
                "columns": ["sf"],
                "prefix": "sys_",
                "how": "left",
            }
        ],
    }


def test_deliver_a_left_join_then_serve_it_from_the_cache(
    tmp_path: Path,
    inputs: dict[str, Path],
    stack: JoinStack,
    client_config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    primaries = [str(inputs[name]) for name in PRIMARIES]
    request = {
        "General": {"OutputFormat": "parquet"},
        "Sample": [{"Name": "dy", "Dataset": dataset.FileList(primaries), "Query": JoinQuery(left_spec(tmp_path))}],
    }
    result = deliver_request(request, client_config)
    files = list(result["dy"])
    assert len(files) == 2, stack.app.log() + stack.transformer_logs()
    output = capsys.readouterr().out
    assert "dy: Transform" in output  # the client's progress bars
    assert "Download" in output
    assert stack.violations() == []

    # One request reached the App, with our code generator's image and the spec as its selection.
    (status,) = stack.transformations().values()
    assert (status["files-completed"], status["files-failed"]) == (2, 0)
    assert status["image"] == "servicex-joiner:e2e"
    assert status["selection"] == JoinQuery(left_spec(tmp_path)).generate_selection_string()

    # The joined content: every primary event once, the friend's value where the friend has the event.
    expected = {k: v for name in PRIMARIES for k, v in primary_rows(inputs[name]).items()}
    friend_sf = {}
    for name in PRIMARIES:
        friend = uproot.open(tmp_path / "friends" / f"sf_{name}")["Events"].arrays([*KEYS, "sf"]).to_list()
        friend_sf.update({key_of(row): row["sf"] for row in friend})
    joined = load_joined(result, names=["dy"])
    rows = joined.to_list()
    assert len(rows) == len(expected) == 80
    assert {key_of(r) for r in rows} == set(expected)
    for row in rows:
        key = key_of(row)
        assert row["nMuon"] == expected[key]["nMuon"]
        assert row["Muon_pt"] == pytest.approx(expected[key]["Muon_pt"])
        if key in friend_sf:
            assert row["sys_matched"] is True
            assert row["sys_sf"] == pytest.approx(friend_sf[key])
        else:
            assert row["sys_matched"] is False
            assert row["sys_sf"] is None
    assert 0 < sum(r["sys_matched"] for r in rows) < len(rows)
    schema = pq.read_schema(files[0])
    assert str(schema.field("event").type) == "uint64"

    # The same request again: served from the client's cache, nothing submitted.
    again = deliver_request(request, client_config)
    assert sorted(again["dy"]) == sorted(files)
    assert len(stack.transformations()) == 1


def test_a_failed_file_is_reported_as_the_client_reports_failures(
    tmp_path: Path,
    inputs: dict[str, Path],
    stack: JoinStack,
    client_config: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    request = join_request(left_spec(tmp_path), [str(inputs["nano_dy.root"]), str(inputs["corrupt"])], name="bad")
    with caplog.at_level(logging.ERROR, logger="servicex.query_core"):
        result = deliver_request(request, client_config)
    (status,) = stack.transformations().values()
    assert (status["files-completed"], status["files-failed"], status["status"]) == (1, 1, "Complete")
    failure = 'Transform "bad" completed with failures: 1/2 files failed.'
    assert failure in caplog.text, caplog.text
    # servicex 3.3.1 logs the failure, hands over the files that were transformed, and caches nothing.
    assert result["bad"].valid()
    assert len(result["bad"]) == 1
    delivered = {key_of(row) for row in load_joined(result).to_list()}
    assert delivered == set(primary_rows(inputs["nano_dy.root"]))
    assert "FAILED" in stack.transformer_logs()
    assert stack.violations() == []
    # Not cached: the same request is submitted again.
    deliver_request(request, client_config)
    assert len(stack.transformations()) == 2


def test_an_outer_join_is_two_samples_read_back_as_one_array(
    tmp_path: Path, inputs: dict[str, Path], stack: JoinStack, client_config: Path
) -> None:
    spec = {
        "key": "cms",
        "primary": {"columns": ["nMuon"]},
        "friends": [{"name": "sys", "files": [str(inputs["outer_friend"])], "columns": ["sf"], "how": "outer"}],
    }
    request = join_request(spec, [str(inputs["nano_dy.root"])], name="dy-outer")
    result = deliver_request(request, client_config)
    names = sample_names(spec, "dy-outer")
    assert sorted(result) == sorted(names) == ["dy-outer", "dy-outer-anti"]
    joined = load_joined(result, names=names)
    rows = joined.to_list()
    primary = primary_rows(inputs["nano_dy.root"])
    friend = {key_of(r): r["sf"] for r in uproot.open(inputs["outer_friend"])["Events"].arrays().to_list()}
    assert {key_of(r) for r in rows} == set(primary) | set(friend)
    assert len(rows) == len(set(primary) | set(friend)) == 40 + 7
    for row in rows:
        key = key_of(row)
        assert row["nMuon"] == (primary[key]["nMuon"] if key in primary else None)
        assert row["sf"] == (pytest.approx(friend[key]) if key in friend else None)
        assert row["sys_matched"] is (key in friend)
    assert ak.sum(joined["sys_matched"]) == len(friend)
    assert stack.violations() == []


def test_a_refused_spec_reaches_the_user_with_the_code_generators_message(
    tmp_path: Path, inputs: dict[str, Path], stack: JoinStack, client_config: Path
) -> None:
    spec = {"friends": [{"name": "sys", "files": ["/etc/passwd"], "columns": ["sf"]}]}
    request = join_request(spec, [str(inputs["nano_dy.root"])], name="refused")
    result = deliver_request(request, client_config)
    assert not result["refused"].valid()
    with pytest.raises(ReturnValueException) as raised:
        list(result["refused"])
    message = str(raised.value)
    assert "Failed to generate translation code: invalid join spec: friends.0.files.0" in message
    assert "JOINER_ALLOWED_LOCATIONS" in message
    assert stack.transformations() == {}
