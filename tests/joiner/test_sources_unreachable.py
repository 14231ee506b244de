"""A file whose server cannot be reached is a transient failure (`SourceUnavailableError`, an OSError the
worker retries), never a permanent `InputFileError`: the store is down, nothing is wrong with the file.

The S3 endpoint here is a loopback port nothing listens on, reached through the real s3fs and botocore."""

from __future__ import annotations

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
    outer = OSError("basket read failed")
    outer.__cause__ = ConnectionResetError(104, "reset by peer")
    assert unreachable(outer)  # found in the chain it was raised from
