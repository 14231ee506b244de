"""The join spec: what it accepts, and refusals that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from joiner.errors import SpecError
from joiner.spec import How, KeyPreset, load_spec, parse_spec, parse_spec_text


def _spec(**changes):
    base = {
        "primary": {"files": ["a.root"], "columns": ["Jet_pt"]},
        "key": "cms",
        "friends": [{"name": "sys", "files": ["f.root"], "columns": ["sf"]}],
    }
    base.update(changes)
    return base


def test_defaults_and_presets() -> None:
    spec = parse_spec(_spec())
    assert spec.key is KeyPreset.CMS
    assert spec.key_columns == ("run", "luminosityBlock", "event")
    assert spec.primary_tree == "Events"
    assert spec.friends[0].how is How.LEFT
    assert spec.duplicates == "error"
    assert spec.fill_missing is None
    atlas = parse_spec(_spec(key="atlas-mc"))
    assert atlas.primary_tree == "CollectionTree"
    assert atlas.key_columns[0] == "EventInfoAuxDyn.mcChannelNumber"
    explicit = parse_spec(_spec(key=["runNumber", "eventNumber"]))
    assert explicit.key_columns == ("runNumber", "eventNumber")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"key": "lhcb"}, "key: unknown key preset 'lhcb'"),
        ({"duplicates": "last"}, "duplicates"),
        ({"fill_missing": "zero"}, "fill_missing"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"friends": [{"name": "sys", "files": ["f.root"], "columns": ["sf"], "how": "sideways"}]}, "friends.0.how"),
        ({"friends": [{"name": "1bad", "files": ["f.root"], "columns": ["sf"]}]}, "friends.0.name"),
        ({"friends": [{"name": "sys", "files": [], "columns": ["sf"]}]}, "friends.0.files"),
        ({"friends": [{"name": "sys", "files": ["f"], "columns": ["sf"], "how": "anti"}]}, "anti is internal"),
        (
            {
                "friends": [
                    {"name": "a", "files": ["f"], "columns": ["x"]},
                    {"name": "a", "files": ["g"], "columns": ["y"]},
                ]
            },
            "unique",
        ),
        (
            {
                "friends": [
                    {"name": "a", "files": ["f"], "columns": ["x"], "how": "outer"},
                    {"name": "b", "files": ["g"], "columns": ["y"]},
                ]
            },
            "exactly one friend",
        ),
        ({"primary": {"files": ["a"], "columns": ["x", "x"]}}, "primary.columns"),
        ({"inference": [{"model": "m", "inputs": {}, "outputs": {"O": "score"}}]}, "inference.0.inputs"),
        ({"key": []}, "key"),
        (
            {"friends": [{"name": "a", "files": ["f"], "columns": ["x"], "key": ["runNumber", "eventNumber"]}]},
            "friend 'a' names 2 key branches ['runNumber', 'eventNumber'], but the key has 3 columns",
        ),
        ({"friends": [{"name": "a", "files": ["f"], "columns": ["x"], "key": ["r", "r", "e"]}]}, "friends.0.key"),
    ],
)
def test_bad_specs_name_the_field(changes, fragment) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(_spec(**changes))
    assert fragment in str(caught.value)


def test_spec_hash_is_canonical() -> None:
    a = parse_spec(_spec())
    b = parse_spec_text(
        '{"key": "cms", "friends": [{"columns": ["sf"], "files": ["f.root"], "name": "sys"}],'
        ' "primary": {"columns": ["Jet_pt"], "files": ["a.root"]}}'
    )
    assert a.spec_hash() == b.spec_hash()
    c = parse_spec(_spec(primary={"files": ["other.root"], "columns": ["Jet_pt"]}))
    assert a.spec_hash() != c.spec_hash()
    assert a.spec_hash(without_primary_files=True) == c.spec_hash(without_primary_files=True)


def test_a_friend_key_changes_the_hash_only_where_it_is_set() -> None:
    plain = parse_spec(_spec())
    assert "key" not in plain.normalised()["friends"][0]  # specs written before `key` existed keep their hash
    assert plain.spec_hash() == "01ef9d997f9a7072b376d95df380c61f7886359482e54d3a699323b081a35a1d"
    named = parse_spec(_spec(friends=[{"name": "sys", "files": ["f.root"], "columns": ["sf"], "key": ["r", "l", "e"]}]))
    assert named.normalised()["friends"][0]["key"] == ["r", "l", "e"]
    assert named.spec_hash() != plain.spec_hash()
    assert parse_spec(named.normalised()) == named


def test_key_branches_per_dataset() -> None:
    atlas = parse_spec(_spec(key="atlas"))
    branches = atlas.key_branches(atlas.friends[0])
    assert branches.candidates("EventInfoAuxDyn.runNumber") == ("EventInfoAuxDyn.runNumber", "runNumber")
    assert branches.resolve({"runNumber", "eventNumber", "x"}, atlas.key_columns) == ["runNumber", "eventNumber"]
    assert branches.resolve(set(atlas.key_columns) | {"runNumber"}, atlas.key_columns) == list(atlas.key_columns)
    flat = parse_spec(_spec(key=["runNumber", "eventNumber"]))  # a flat primary reaches PHYSLITE friends
    assert flat.key_branches().resolve({"EventInfoAuxDyn.runNumber", "EventInfoAuxDyn.eventNumber"},
                                       flat.key_columns) == ["EventInfoAuxDyn.runNumber", "EventInfoAuxDyn.eventNumber"]
    cms = parse_spec(_spec(friends=[{"name": "s", "files": ["f"], "columns": ["x"], "key": ["RUN", "LUMI", "EVT"]}]))
    assert cms.key_branches().candidates("run") == ("run",)
    assert cms.key_branches(cms.friends[0]).candidates("luminosityBlock") == ("LUMI",)


def test_yaml_file_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(
        "primary: {files: [data/a.root], columns: [Jet_pt]}\n"
        "friends:\n  - {name: s, files: ['root://eos//x.root', 'f/*.root'], columns: [sf], prefix: s_}\n"
    )
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.primary.files == [str(tmp_path / "data/a.root")]
    assert spec.friends[0].files == ["root://eos//x.root", str(tmp_path / "f/*.root")]


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("primary: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(tmp_path / "list.yaml")


def test_friend_format_by_extension() -> None:
    spec = parse_spec(_spec(friends=[{"name": "p", "files": ["s3://b/x.parquet"], "columns": ["sf"]}]))
    assert spec.friends[0].format_of("s3://b/x.parquet") == "parquet"
    assert spec.friends[0].format_of("root://h//x.root") == "root"
