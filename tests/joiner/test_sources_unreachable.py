"""A file whose server cannot be reached is a transient failure (`SourceUnavailableError`, an OSError the
worker retries), never a permanent `InputFileError`: the store is down, nothing is wrong with the file.

The S3 endpoint here is a loopback port nothing listens on, reached through the real s3fs and botocore."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from joiner.errors import InputFileError, JoinError, SourceUnavailableError
from joiner.sources import expand_paths, open_source, unreachable
from tests.fixtures.seaweedfs import free_port


@pytest.fixture
def dead_store() -> dict[str, object]:
    """s3fs options for an endpoint that refuses connections (botocore tries once)."""
    return {
        "key": "AK", "secret": "SK",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}", "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
    }  # fmt: skip


@pytest.mark.parametrize("path", ["s3://friends/sys/f.root", "s3://friends/previous/part-0.parquet"])
def test_a_file_in_a_store_that_is_down_is_unavailable_not_broken(path: str, dead_store: dict[str, object]) -> None:
    with pytest.raises(SourceUnavailableError) as caught:
        open_source(path, tree="Events", storage_options=dead_store)
    assert not isinstance(caught.value, JoinError)
    assert caught.value.path == path and "EndpointConnectionError" in str(caught.value)


def test_a_glob_in_a_store_that_is_down_is_unavailable(dead_store: dict[str, object]) -> None:
    with pytest.raises(SourceUnavailableError, match=r"cannot list 's3://friends/sys/\*\.root'"):
        expand_paths(["s3://friends/sys/*.root"], dead_store)


def test_a_broken_file_stays_a_permanent_error(tmp_path: Path, data_dir: Path) -> None:
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes((data_dir / "nano_dy.root").read_bytes()[:20_000])
    with pytest.raises(InputFileError):
        open_source(str(truncated), tree="Events").read_table(["MET_pt"], 0, 40)


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")


def test_which_errors_mean_unreachable() -> None:
    assert unreachable(ConnectionRefusedError(111, "refused"))
    assert unreachable(TimeoutError("read timed out"))
    assert unreachable(_client_error("SlowDown")) and unreachable(_client_error("ServiceUnavailable"))
    assert not unreachable(_client_error("NoSuchKey")) and not unreachable(_client_error("AccessDenied"))
    assert not unreachable(ValueError("not a ROOT file")) and not unreachable(FileNotFoundError("gone"))
    # the XRootD client's plain OSErrors: its transport statuses, not the server's answers about the file
    assert unreachable(OSError("Failed to open file: [FATAL] Connection error"))
    assert unreachable(OSError("XRootD error: [ERROR] Operation expired"))
    assert not unreachable(OSError("Failed to open file: [ERROR] Server responded with an error: [3011] No such file"))
    outer = OSError("basket read failed")
    outer.__cause__ = ConnectionResetError(104, "reset by peer")
    assert unreachable(outer)  # found in the chain it was raised from


def test_an_xrootd_server_that_is_down_is_unavailable() -> None:
    """A root:// replica (what Rucio lists) on a host where no XRootD server answers, through uproot and the
    XRootD client. In a process of its own: the client reads its retry settings once per process."""
    pytest.importorskip("XRootD", reason="the XRootD client is in the test extra (pip install xrootd)")
    code = (
        "from joiner.errors import SourceUnavailableError\n"
        "from joiner.sources import open_source\n"
        "try:\n"
        f"    open_source('root://127.0.0.1:{free_port()}//store/nano.root', tree='Events')\n"
        "except SourceUnavailableError as error:\n"
        "    print('unavailable:', error)\n"
    )
    env = {**os.environ, "XRD_CONNECTIONRETRY": "1", "XRD_CONNECTIONWINDOW": "2", "XRD_REQUESTTIMEOUT": "5"}
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                          timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.startswith("unavailable: cannot open as a ROOT file"), done.stdout + done.stderr
