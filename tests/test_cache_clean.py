"""`servicex-joiner cache clean` against a real S3 server (SeaweedFS): age and size bounds over result and
index objects, objects vanishing meanwhile, objects rewritten meanwhile, the dry run, and the command."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.fixtures.seaweedfs import S3Server
from transformer.cache_clean import clean_cache, plan_clean
from transformer.storage.s3 import ObjectInfo, S3Store

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 1, 10, tzinfo=UTC)


def _info(name: str, size: int, days_ago: float) -> ObjectInfo:
    return ObjectInfo(name, size, T0 - timedelta(days=days_ago))


def test_plan_age_first_then_oldest_until_under_the_size_bound() -> None:
    objects = [_info("results/v1/a", 100, 40), _info("index/index/v1/b", 10, 20), _info("results/v1/c", 300, 5),
               _info("results/v1/d", 200, 1), _info("results/v1/e", 50, 0)]
    names = [o.name for o in plan_clean(objects, now=T0, max_age_days=30, max_bytes=None)]
    assert names == ["results/v1/a"]
    names = [o.name for o in plan_clean(objects, now=T0, max_age_days=30, max_bytes=300)]
    assert names == ["results/v1/a", "index/index/v1/b", "results/v1/c"]  # 250 bytes left
    names = [o.name for o in plan_clean(objects, now=T0, max_age_days=None, max_bytes=0)]
    assert len(names) == 5
    assert plan_clean(objects, now=T0, max_age_days=None, max_bytes=10_000) == []
    undated = ObjectInfo("results/v1/z", 1, None)
    assert plan_clean([*objects, undated], now=T0, max_age_days=None, max_bytes=659)[0] is undated


@pytest.fixture
def cache_bucket(s3_server: S3Server) -> Iterator[tuple[S3Store, str]]:
    store = S3Store(s3_server.settings())
    bucket = "cache-" + uuid.uuid4().hex[:12]
    yield store, bucket
    for item in store.iter_objects(bucket):
        store.remove(bucket, item.name)


@pytest.mark.integration
def test_clean_by_age_and_size_on_a_real_store(cache_bucket: tuple[S3Store, str]) -> None:
    store, bucket = cache_bucket
    store.put_bytes(bucket, "results/v1/old.parquet", b"o" * 400)
    store.put_bytes(bucket, "index/index/v1/old.parquet", b"i" * 100)
    time.sleep(1.1)  # S3 modification times have a resolution of one second
    store.put_bytes(bucket, "results/v1/new.parquet", b"n" * 300)
    store.put_bytes(bucket, "elsewhere/keep.bin", b"k" * 1000)  # not a cache object: never touched

    dry = clean_cache(store, bucket, max_age_days=None, max_bytes=0, dry_run=True)
    assert dry.scanned == 3 and dry.scanned_bytes == 800 and len(dry.deleted) == 3
    assert len(store.list_names(bucket)) == 4

    report = clean_cache(store, bucket, max_age_days=None, max_bytes=350)
    assert sorted(o.name for o in report.deleted) == ["index/index/v1/old.parquet", "results/v1/old.parquet"]
    assert report.remaining_bytes == 300
    assert sorted(store.list_names(bucket)) == ["elsewhere/keep.bin", "results/v1/new.parquet"]

    future = datetime.now(UTC) + timedelta(days=3)
    report = clean_cache(store, bucket, max_age_days=2, max_bytes=None, now=future)
    assert [o.name for o in report.deleted] == ["results/v1/new.parquet"]
    assert store.list_names(bucket) == ["elsewhere/keep.bin"]


class _Racing(S3Store):
    """A store where other parties act between the clean's listing and its deletes."""

    def __init__(self, store: S3Store, bucket: str) -> None:
        super().__init__(store.settings)
        self.bucket = bucket

    def iter_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        listed = list(super().iter_objects(bucket, prefix))
        if prefix == "results/":
            self.remove(self.bucket, "results/v1/gone.parquet")  # another clean deleted it
            time.sleep(1.1)
            self.put_bytes(self.bucket, "results/v1/rewritten.parquet", b"w" * 10)  # a worker rewrote it
        yield from listed


@pytest.mark.integration
def test_objects_vanishing_or_rewritten_meanwhile(cache_bucket: tuple[S3Store, str]) -> None:
    store, bucket = cache_bucket
    for name in ("gone", "rewritten", "plain"):
        store.put_bytes(bucket, f"results/v1/{name}.parquet", b"x" * 10)
    racing = _Racing(store, bucket)
    report = clean_cache(racing, bucket, max_age_days=None, max_bytes=0)
    assert [o.name for o in report.deleted] == ["results/v1/plain.parquet"]
    assert report.kept_newer == 1
    assert store.list_names(bucket) == ["results/v1/rewritten.parquet"]


@pytest.mark.integration
def test_the_cache_clean_command(s3_server: S3Server, cache_bucket: tuple[S3Store, str]) -> None:
    store, bucket = cache_bucket
    store.put_bytes(bucket, "results/v1/a.parquet", b"a" * 100)
    store.put_bytes(bucket, "index/index/v1/b.parquet", b"b" * 100)
    env = {**s3_server.env(), "JOINER_CACHE_BUCKET": bucket, "PATH": "/usr/bin:/bin"}

    def clean(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "transformer.cli", "cache", "clean", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    dry = clean("--max-bytes", "0", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 2 (1 results, 1 index fragments; 200 bytes)" in dry.stderr
    assert len(store.list_names(bucket)) == 2
    done = clean("--max-age-days", "30", "--max-bytes", "100")
    assert done.returncode == 0, done.stderr
    assert "deleted 1 " in done.stderr and len(store.list_names(bucket)) == 1
    assert clean().returncode == 2
    assert clean("--max-bytes", "-1").returncode == 2
