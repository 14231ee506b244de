"""JoinQuery with the real servicex client: entry point, YAML request files, selection, cache hash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import servicex.query
from servicex import dataset
from servicex.databinder_models import ServiceXSpec
from servicex.models import ResultDestination, ResultFormat, TransformRequest
from servicex.query_core import QueryStringGenerator
from servicex.servicex_client import ServiceXClient, _load_ServiceXSpec

from joiner.errors import SpecError
from joiner.spec import parse_spec
from transformer.client.query import JoinQuery

SPEC: dict[str, Any] = {
    "key": "cms",
    "primary": {"columns": ["Jet_pt", "nJet"]},
    "friends": [{"name": "sys", "files": ["s3://friends/sys.root"], "columns": ["Jet_sf"], "prefix": "sys_"}],
}


def test_entry_point_registers_the_class() -> None:
    assert servicex.query.JoinQuery is JoinQuery
    assert issubclass(JoinQuery, QueryStringGenerator)
    assert JoinQuery.default_codegen == "join"


QUERY_FIRST = "from transformer.client.query import JoinQuery as J\nimport servicex.query as q\n"
SERVICEX_FIRST = "import servicex.query as q\nfrom transformer.client.query import JoinQuery as J\n"


@pytest.mark.parametrize(
    "code",
    [
        QUERY_FIRST + "assert q.JoinQuery is J",
        SERVICEX_FIRST + "assert q.JoinQuery is J",
        "from transformer.client.samples import join_request; from transformer.client.query import JoinQuery",
        "import transformer.client, transformer.cli, sys; assert 'servicex' not in sys.modules",
        "import transformer.api.app, transformer.worker, sys; assert 'servicex' not in sys.modules",
    ],
)
def test_any_import_order_works_in_a_fresh_interpreter(code: str) -> None:
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_form_of_the_spec_gives_the_same_selection(tmp_path: Path) -> None:
    yaml_file = tmp_path / "spec.yaml"
    yaml_file.write_text(
        "friends:\n  - {name: sys, prefix: sys_, columns: [Jet_sf], files: ['s3://friends/sys.root']}\n"
        "primary: {columns: [Jet_pt, nJet]}\nkey: cms\n"
    )
    forms: list[Any] = [
        SPEC,
        dict(reversed(list(SPEC.items()))),
        parse_spec(SPEC),
        str(yaml_file),
        yaml_file,
        yaml_file.read_text(),
        json.dumps(SPEC, indent=2),
    ]
    selections = {JoinQuery(form).generate_selection_string() for form in forms}
    assert len(selections) == 1
    (selection,) = selections
    assert selection == parse_spec(SPEC).canonical_json()
    assert json.loads(selection)["friends"][0]["prefix"] == "sys_"
    assert JoinQuery(SPEC) == JoinQuery(yaml_file)
    assert JoinQuery("key: atlas") == JoinQuery({"key": "atlas"})
    assert hash(JoinQuery(SPEC)) == hash(JoinQuery(yaml_file))


def test_a_bad_spec_fails_before_submission_naming_the_field() -> None:
    bad = {**SPEC, "friends": [{**SPEC["friends"][0], "how": "sideways"}]}
    with pytest.raises(SpecError, match=r"friends\.0\.how"):
        JoinQuery(bad)
    with pytest.raises(SpecError, match=r"colums: unknown field"):
        JoinQuery({"primary": {"colums": ["x"]}})
    with pytest.raises(SpecError, match="cannot read spec file"):
        JoinQuery("/no/such/spec.yaml")
    with pytest.raises(SpecError, match="not int"):
        JoinQuery(3)  # type: ignore[arg-type]


def test_right_and_outer_specs_need_the_primary_files() -> None:
    right = {**SPEC, "friends": [{**SPEC["friends"][0], "how": "right"}]}
    with pytest.raises(SpecError, match=r"primary\.files.*join_request"):
        JoinQuery(right)
    with_files = {**right, "primary": {**SPEC["primary"], "files": ["root://eos//p.root"]}}
    assert JoinQuery(with_files).spec.friends[0].how.value == "right"


def test_yaml_request_files_take_the_join_tag(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(json.dumps(SPEC))
    request = tmp_path / "request.yaml"
    request.write_text(
        f"""
General:
  OutputFormat: parquet
Sample:
  - Name: text
    Dataset: !FileList ["root://eos//a.root"]
    Query: !Join |
      key: cms
      primary: {{columns: [Jet_pt, nJet]}}
      friends:
        - {{name: sys, files: ["s3://friends/sys.root"], columns: [Jet_sf], prefix: sys_}}
  - Name: inline
    Dataset: !FileList ["root://eos//b.root"]
    Query: !Join
      key: cms
      primary: {{columns: [Jet_pt, nJet]}}
      friends:
        - {{name: sys, files: ["s3://friends/sys.root"], columns: [Jet_sf], prefix: sys_}}
  - Name: file
    Dataset: !FileList ["root://eos//c.root"]
    Query: !Join {tmp_path / "spec.yaml"}
"""
    )
    loaded = _load_ServiceXSpec(request)
    assert [s.Name for s in loaded.Sample] == ["text", "inline", "file"]
    for sample in loaded.Sample:
        assert isinstance(sample.Query, JoinQuery)
        assert sample.Query == JoinQuery(SPEC)


def test_the_client_builds_a_join_request_and_its_cache_hash_is_stable(tmp_path: Path) -> None:
    config = tmp_path / "servicex.yaml"
    config.write_text(
        f"api_endpoints:\n  - name: local\n    endpoint: http://127.0.0.1:9\ncache_path: {tmp_path / 'cache'}\n"
    )
    client = ServiceXClient(backend="local", config_path=str(config))
    client.query_cache.close()
    files = ["root://eos//b.root", "root://eos//a.root"]
    query = client.generic_query(dataset_identifier=dataset.FileList(files), query=JoinQuery(SPEC))
    request = query.transform_request
    assert request.codegen == "join"
    assert request.result_format is ResultFormat.parquet
    assert request.selection == parse_spec(SPEC).canonical_json()

    again = TransformRequest(
        title="another title",
        codegen="join",
        result_destination=ResultDestination.object_store,
        result_format=ResultFormat.parquet,
        selection=JoinQuery(dict(reversed(list(SPEC.items())))).generate_selection_string(),
        file_list=list(reversed(files)),
    )
    assert again.compute_hash() == request.compute_hash()


def test_deliver_specs_validate_with_join_queries() -> None:
    spec = ServiceXSpec(
        General={"OutputFormat": "parquet"},
        Sample=[{"Name": "x", "Dataset": dataset.FileList(["root://eos//a.root"]), "Query": JoinQuery(SPEC)}],
    )
    assert spec.Sample[0].Query.default_codegen == "join"
    assert JoinQuery(SPEC, codegen="join-test").default_codegen == "join-test"
    assert "sys:left" in repr(JoinQuery(SPEC))
