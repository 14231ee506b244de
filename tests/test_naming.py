"""Object names by ServiceX's rule, and the allowed-locations and replica-order helpers."""

from __future__ import annotations

import hashlib

import pytest

from transformer.errors import LocationNotAllowedError
from transformer.locations import AllowedLocations, order_replicas
from transformer.naming import MAX_PATH_LEN, hash_path, object_name


def test_short_names_are_kept() -> None:
    assert hash_path("root:::host:1094::data:f.root.parquet") == "root:::host:1094::data:f.root.parquet"
    assert object_name("root://host:1094//data/f.root", parquet=True) == "root:::host:1094::data:f.root.parquet"
    assert object_name("root://host:1094//data/f.root", parquet=False) == "root:::host:1094::data:f.root"


def test_long_names_become_hash_plus_tail_of_255_chars() -> None:
    path = "root://eos.example.org:1094//" + "/".join(["deep"] * 80) + "/nano_file_0001.root"
    name = path.replace("/", ":") + ".parquet"
    result = object_name(path, parquet=True)
    assert len(result) == MAX_PATH_LEN
    assert result == "_" + hashlib.sha1(name.encode()).hexdigest() + name[-214:]
    assert result.endswith("nano_file_0001.root.parquet")
    assert object_name(path, parquet=True) == result  # same input, same name
    exactly = "x" * MAX_PATH_LEN
    assert hash_path(exactly) == exactly
    assert len(hash_path(exactly + "y")) == MAX_PATH_LEN


def test_allowed_locations() -> None:
    allowed = AllowedLocations(["root://", "s3://friends/", " "])
    allowed.check("root://host//f.root")
    allowed.check("s3://friends/a.root")
    for bad in ("/etc/passwd", "file:///etc/passwd", "s3://other/a.root", "http://internal:8000/x",
                "s3://friends/../other/x"):
        with pytest.raises(LocationNotAllowedError, match="JOINER_ALLOWED_LOCATIONS") as info:
            allowed.check(bad)
        assert bad in str(info.value)
    with pytest.raises(PermissionError):
        AllowedLocations([]).check("root://x//y")


def test_replica_order_and_xcache_prefix() -> None:
    paths = ["https://a/f.root", "davs://b/f.root", "root://c//f.root"]
    assert order_replicas(paths) == ["root://c//f.root", "https://a/f.root", "https://b/f.root"]
    cached = order_replicas(["root://c//f.root"], ["xc1:1094", "xc2:1094"])
    assert cached[0].startswith("root://xc") and cached[0].endswith("//root://c//f.root")
    assert order_replicas(["root://c//f.root"], ["xc1:1094", "xc2:1094"]) == cached
