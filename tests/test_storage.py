"""Storage against a real S3 server (SeaweedFS, signature-checked) through the minio client, and locally."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.fixtures.seaweedfs import S3Server
from transformer.errors import StorageError
from transformer.settings import ObjectStoreSettings
from transformer.storage.local import LocalDirectorySink, LocalFragmentStore
from transformer.storage.s3 import S3FragmentStore, S3ResultSink, S3Store, s3_storage_options

pytestmark = pytest.mark.integration


def test_upload_overwrites_one_object_and_reports_its_size(s3_server: S3Server, tmp_path: Path) -> None:
    store = S3Store(s3_server.settings())
    sink = S3ResultSink(store, "req-upload")
    first = tmp_path / "a"
    first.write_bytes(b"x" * 1234)
    assert sink.store_file(first, "root:::h::f.root.parquet") == 1234
    second = tmp_path / "b"
    second.write_bytes(b"y" * 99)
    assert sink.store_file(second, "root:::h::f.root.parquet") == 99  # a redelivery overwrites
    assert store.list_names("req-upload") == ["root:::h::f.root.parquet"]
    assert store.get_bytes("req-upload", "root:::h::f.root.parquet") == b"y" * 99
    assert store.size("req-upload", "missing") is None
    assert store.size("no-such-bucket", "x") is None


def test_wrong_credentials_and_dead_server_raise_storage_error(s3_server: S3Server, tmp_path: Path) -> None:
    bad = S3Store(
        ObjectStoreSettings(url=s3_server.url, access_key=SecretStr(s3_server.access_key),
                            secret_key=SecretStr("not-the-secret"))
    )
    with pytest.raises(StorageError, match=r"AccessDenied|SignatureDoesNotMatch"):
        bad.put_bytes("req-bad", "x", b"1")
    dead = S3Store(ObjectStoreSettings(url="127.0.0.1:9", access_key=SecretStr("a"), secret_key=SecretStr("b")),
                   connect_timeout=0.5)
    with pytest.raises(StorageError) as info:
        dead.get_bytes("some-bucket", "x")
    assert isinstance(info.value, OSError)


def test_fragment_store_concurrent_builders(s3_server: S3Server) -> None:
    fragments = S3FragmentStore(S3Store(s3_server.settings()), "servicex-joiner-cache-test")
    assert fragments.get("v1-abc") is None
    data = bytes(range(256)) * 4096
    errors: list[BaseException] = []

    def build() -> None:
        try:
            # each builder its own client, as separate workers would have
            S3FragmentStore(S3Store(s3_server.settings()), "servicex-joiner-cache-test").put("v1-abc", data)
        except BaseException as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert fragments.get("v1-abc") == data


def test_storage_options_for_s3_friends(s3_server: S3Server) -> None:
    options = s3_storage_options(s3_server.settings())
    assert options is not None
    assert options["client_kwargs"]["endpoint_url"] == f"http://{s3_server.url}"
    assert options["key"] == s3_server.access_key
    assert s3_storage_options(ObjectStoreSettings(url=None)) is None


def test_local_sink_and_fragments(tmp_path: Path) -> None:
    source = tmp_path / "scratch.parquet"
    source.write_bytes(b"data")
    sink = LocalDirectorySink(tmp_path / "out")
    assert sink.store_file(source, "name.parquet") == 4
    assert sink.store_file(source, "name.parquet") == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["name.parquet"]
    fragments = LocalFragmentStore(tmp_path / "idx")
    assert fragments.get("k") is None
    fragments.put("k", b"abc")
    assert fragments.get("k") == b"abc"
