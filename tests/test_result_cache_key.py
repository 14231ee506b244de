"""The result cache key: every ingredient changes it, replica and xcache prefixes do not, and models
without a nameable version turn the cache off."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pytest

from transformer.result_cache import RESULTS_PREFIX, ResultCounts, result_key
from transformer.task import logical_path, model_versions

BASE: dict[str, Any] = {
    "spec_canonical": '{"key":"cms"}',
    "input_identity": {"path": "/store/x.root", "size": 10, "uuid": "u-1"},
    "role": "primary",
    "fragments": {"sys": ["index/v1/a.parquet", "index/v1/b.parquet"]},
    "models": [{"model": "tagger", "version": "2"}],
    "output_format": "parquet",
    "parquet": True,
    "engine_version": "0.1.0",
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spec_canonical", '{"key":"atlas"}'),
        ("input_identity", {"path": "/store/x.root", "size": 11, "uuid": "u-1"}),
        ("input_identity", {"path": "/store/x.root", "size": 10, "uuid": "u-2"}),
        ("input_identity", {"path": "/store/y.root", "size": 10, "uuid": "u-1"}),
        ("role", "anti"),
        ("fragments", {"sys": ["index/v1/a.parquet", "index/v1/c.parquet"]}),
        ("fragments", {"sys": ["index/v1/b.parquet", "index/v1/a.parquet"]}),
        ("models", [{"model": "tagger", "version": "3"}]),
        ("models", [{"model": "other", "version": "2"}]),
        ("engine_version", "0.2.0"),
    ],
)
def test_every_ingredient_changes_the_key(field: str, value: object) -> None:
    assert result_key(**{**BASE, field: value}).digest != result_key(**BASE).digest


def test_key_names_and_format() -> None:
    parquet = result_key(**BASE)
    root = result_key(**{**BASE, "output_format": "root-file", "parquet": False})
    assert parquet.object_name == RESULTS_PREFIX + parquet.digest + ".parquet"
    assert root.object_name == RESULTS_PREFIX + root.digest and root.digest != parquet.digest
    assert RESULTS_PREFIX == "results/v2/"
    assert result_key(**dict(reversed(list(BASE.items())))) == parquet  # argument order is irrelevant


@pytest.mark.parametrize(
    ("path", "logical"),
    [
        ("root://eos.cern.ch//store/data/x.root", "/store/data/x.root"),
        ("root://xcache.local:1094//root://eos.cern.ch//store/data/x.root", "/store/data/x.root"),
        ("https://dcache.site:2880/store/data/x.root", "/store/data/x.root"),
        ("root://xcache:1094//https://dcache.site:2880/store/data/x.root", "/store/data/x.root"),
        ("s3://bucket/x.root", "s3://bucket/x.root"),
        ("file:///data/x.root", "/data/x.root"),
        ("/data/x.root", "/data/x.root"),
    ],
)
def test_logical_path_drops_replica_and_cache_prefixes(path: str, logical: str) -> None:
    assert logical_path(path) == logical


class _Producer:
    def __init__(self, description: Mapping[str, Any]) -> None:
        self.description = description

    def __call__(self, table: pa.Table) -> pa.Table:
        return table

    def describe(self) -> Mapping[str, Any]:
        return self.description


def test_model_versions() -> None:
    pinned = _Producer({"models": [{"model": "a", "version": "4", "available_versions": ["4", "5"]}]})
    latest = _Producer({"models": [{"model": "b", "version": None, "available_versions": ["2", "10", "9"]}]})
    assert model_versions([pinned, latest]) == [{"model": "a", "version": "4"}, {"model": "b", "version": "10"}]
    assert model_versions([]) == []
    unknown = _Producer({"models": [{"model": "c", "version": None, "available_versions": []}]})
    assert model_versions([pinned, unknown]) is None  # server not reached yet: no caching for that file
    assert model_versions([_Producer({"producer": "other"})]) is None


def test_counts_metadata_round_trip() -> None:
    counts = ResultCounts(5, 7, {"sys": 5, "é": 1}, {"sys": 2})
    text = counts.to_metadata()
    assert text.isascii()
    assert ResultCounts.from_metadata(text) == counts
    with pytest.raises(ValueError, match="unreadable cache counts"):
        ResultCounts.from_metadata('{"out": 1}')
