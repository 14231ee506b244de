"""The deliver() samples of one join: inner/left over the primary files, right/outer over the friend files."""

from __future__ import annotations

from typing import Any

import pytest
from servicex import dataset
from servicex.databinder_models import ServiceXSpec

from joiner.errors import SpecError
from transformer.client.query import JoinQuery
from transformer.client.samples import join_request, join_samples, sample_names

PRIMARY = ["root://eos//p1.root", "root://eos//p2.root"]
FRIENDS = ["s3://friends/f1.root", "s3://friends/f2.root"]


def spec(how: str, files: list[str] | None = None) -> dict[str, Any]:
    return {
        "key": "cms",
        "primary": {"columns": ["Jet_pt"]},
        "friends": [{"name": "sys", "files": files or FRIENDS, "columns": ["Jet_sf"], "how": how}],
    }


@pytest.mark.parametrize("how", ["inner", "left"])
def test_inner_and_left_joins_are_one_sample_over_the_dataset(how: str) -> None:
    rucio = dataset.Rucio("mc23:some.dataset")
    (sample,) = join_samples(spec(how), rucio, name="tt")
    assert sample["Name"] == "tt"
    assert sample["Dataset"] is rucio
    assert sample["Query"] == JoinQuery(spec(how))
    assert sample_names(spec(how), "tt") == ["tt"]


def test_a_right_join_is_one_sample_over_the_friend_files() -> None:
    (sample,) = join_samples(spec("right"), dataset.FileList(PRIMARY), name="tt")
    assert sample["Name"] == "tt"
    assert sample["Dataset"].files == FRIENDS
    query: JoinQuery = sample["Query"]
    assert query.spec.primary.files == PRIMARY
    assert query.spec.friends[0].how.value == "right"
    assert sample_names(spec("right"), "tt") == ["tt"]


def test_an_outer_join_is_the_primary_files_plus_the_friend_files() -> None:
    samples = join_samples(spec("outer"), PRIMARY, name="tt", ignore_local_cache=True)
    assert [s["Name"] for s in samples] == sample_names(spec("outer"), "tt") == ["tt", "tt-anti"]
    assert samples[0]["Dataset"].files == PRIMARY
    assert samples[1]["Dataset"].files == FRIENDS
    assert samples[0]["Query"] == samples[1]["Query"]
    assert samples[0]["Query"].spec.primary.files == PRIMARY
    assert all(s["IgnoreLocalCache"] for s in samples)


def test_join_request_asks_for_parquet_and_validates_as_a_client_spec() -> None:
    request = join_request(spec("outer"), dataset.FileList(PRIMARY), name="tt")
    assert request["General"] == {"OutputFormat": "parquet"}
    validated = ServiceXSpec(**request)
    assert [s.Name for s in validated.Sample] == ["tt", "tt-anti"]
    assert {s.Query.default_codegen for s in validated.Sample} == {"join"}


def test_right_and_outer_joins_refuse_what_cannot_become_tasks() -> None:
    with pytest.raises(SpecError, match="needs the primary files listed"):
        join_samples(spec("right"), dataset.Rucio("mc23:some.dataset"), name="tt")
    with pytest.raises(SpecError, match="not as globs"):
        join_samples(spec("outer", ["s3://friends/*.root"]), PRIMARY, name="tt")
    with pytest.raises(SpecError, match="are primary files too"):
        join_samples(spec("outer", [PRIMARY[0]]), PRIMARY, name="tt")
    with pytest.raises(SpecError, match="lists no files"):
        join_samples(spec("right"), [], name="tt")
    other = {**spec("right"), "primary": {"columns": ["Jet_pt"], "files": ["root://eos//other.root"]}}
    with pytest.raises(SpecError, match="other primary files than the dataset"):
        join_samples(other, PRIMARY, name="tt")
    same = {**spec("right"), "primary": {"columns": ["Jet_pt"], "files": list(reversed(PRIMARY))}}
    assert join_samples(same, PRIMARY, name="tt")[0]["Query"].spec.primary.files == PRIMARY
