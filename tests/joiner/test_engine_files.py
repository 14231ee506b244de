"""File-level joins on real NanoAOD/PHYSLITE files: every join kind, the checks, the output format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot

import joiner
from joiner.datagen import write_tree
from joiner.engine import OutputFormat, Role, join_file, resolve_friend_indexes
from joiner.errors import (
    CollectionLengthError,
    DuplicateKeyError,
    InputFileError,
    KeyMismatchError,
    KeyTypeError,
    MissingColumnError,
    SchemaError,
)
from joiner.spec import parse_spec
from joiner.writing import read_join_metadata, read_runs
from tests.fixtures.http_files import HttpFiles
from tests.joiner import friends

KEY = ["run", "luminosityBlock", "event"]


def _spec(primary: Path, friend_list: list[dict], **extra) -> joiner.JoinSpec:
    return parse_spec(
        {"primary": {"files": [str(primary)], "columns": ["Jet_pt", "MET_pt"]}, "friends": friend_list, **extra}
    )


def _friend(name: str, files: list[Path], **extra) -> dict:
    return {
        "name": name,
        "files": [str(f) for f in files],
        "tree": "Friends",
        "columns": ["sf", "Jet_sf"],
        "prefix": f"{name}_",
        **extra,
    }


def _metadata(path: Path) -> dict:
    return read_join_metadata(path)


def _check_values(out: ak.Array, name: str) -> None:
    matched = out[f"{name}_matched"]
    assert ak.all(out[f"{name}_sf"][matched] == out.MET_pt[matched] * 2)
    assert ak.all(ak.flatten(out[f"{name}_Jet_sf"][matched]) == ak.flatten(out.Jet_pt[matched]) * 0.5)
    assert ak.all(ak.is_none(out[f"{name}_sf"][~matched]))
    assert ak.all(ak.is_none(out[f"{name}_Jet_sf"][~matched]))


def test_aligned_reordered_regrouped_left_joins(nano_dy: Path, tmp_path: Path) -> None:
    spec = _spec(
        nano_dy,
        [
            _friend("al", [friends.aligned(nano_dy, tmp_path)]),
            _friend("sh", [friends.shuffled(nano_dy, tmp_path, drop=0.1)]),
            _friend("rg", friends.regrouped([nano_dy], tmp_path, drop=0.2)),
        ],
    )
    result = join_file(spec, str(nano_dy), tmp_path / "out.parquet")
    out = ak.from_parquet(tmp_path / "out.parquet")
    primary = friends.read_primary(nano_dy)
    assert len(out) == len(primary) == result.events_in == result.events_out == 40
    assert ak.all(out.event == primary.event)  # primary order kept
    for name in ("al", "sh", "rg"):
        _check_values(out, name)
    assert result.matched == {"al": 40, "sh": 36, "rg": 32}
    assert result.unmatched == {"al": 0, "sh": 4, "rg": 8}
    meta = _metadata(tmp_path / "out.parquet")
    assert meta["join_paths"] == {"al": ["aligned"], "sh": ["merge"], "rg": ["merge"]}
    assert meta["key_columns"] == KEY
    assert meta["rows"]["matched"]["sh"] == 36
    assert meta["spec_hash"] == spec.spec_hash(without_primary_files=True)
    assert meta["input"] == str(nano_dy)
    assert any(i["uuid"] for i in meta["inputs"])
    assert len(meta["key_digest"]) == 64


def test_schema_is_nanoaod_style(nano_dy: Path, tmp_path: Path) -> None:
    spec = _spec(nano_dy, [_friend("sh", [friends.shuffled(nano_dy, tmp_path, drop=0.1)])])
    join_file(spec, str(nano_dy), tmp_path / "out.parquet")
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert schema.names[:4] == [*KEY, "nJet"]
    assert str(schema.field("run").type) == "uint32"
    assert str(schema.field("event").type) == "uint64"
    assert not schema.field("event").nullable
    assert not schema.field("Jet_pt").nullable
    assert schema.field("sh_Jet_sf").nullable
    assert not schema.field("sh_Jet_sf").type.value_field.nullable
    assert not schema.field("sh_matched").nullable
    runs = read_runs(tmp_path / "out.parquet")
    assert runs is not None
    assert runs[0]["genEventCount_"] == 850098


def test_inner_join_keeps_only_matched(nano_dy: Path, tmp_path: Path) -> None:
    spec = _spec(nano_dy, [_friend("sh", [friends.shuffled(nano_dy, tmp_path, drop=0.25)], how="inner")])
    result = join_file(spec, str(nano_dy), tmp_path / "out.parquet")
    out = ak.from_parquet(tmp_path / "out.parquet")
    assert result.events_out == len(out) == 30
    assert ak.all(out.sh_matched)
    _check_values(out, "sh")


def test_chunked_equals_unchunked(nano_dy: Path, tmp_path: Path) -> None:
    spec = _spec(
        nano_dy,
        [
            _friend("al", [friends.aligned(nano_dy, tmp_path)]),
            _friend("rg", friends.regrouped([nano_dy], tmp_path, drop=0.2)),
        ],
    )
    join_file(spec, str(nano_dy), tmp_path / "whole.parquet")
    join_file(spec, str(nano_dy), tmp_path / "chunked.parquet", chunk_entries=7)
    whole = pq.read_table(tmp_path / "whole.parquet")
    chunked = pq.read_table(tmp_path / "chunked.parquet")
    assert whole.equals(chunked)


def _outer_reference(primary: Path, friend_path: Path, how: str) -> ak.Array:
    events = friends.read_primary(primary)
    friend = uproot.open(friend_path)["Friends"].arrays([*KEY, "sf", "Jet_sf"])
    return joiner.join(events, {"f": friend}, how=how, prefix={"f": "f_"})


def _rows(array: ak.Array) -> list[tuple]:
    return sorted(
        (int(r["event"]), r["MET_pt"], r["f_sf"], tuple(r["Jet_pt"] or ()), tuple(r["f_Jet_sf"] or ()))
        for r in ak.to_list(array)
    )


def test_outer_join_is_left_part_plus_anti_parts(nano_dy: Path, tmp_path: Path) -> None:
    events = friends.read_primary(nano_dy)
    # the friend misses 10 primary events and has 5 events the primary does not
    extra = events[:5]
    extra = ak.with_field(extra, extra.event + 10**9, "event")
    friend_events = ak.concatenate([events[10:], extra])
    friend_path = friends.write_friend(tmp_path / "outer_friend.root", friend_events)
    spec = _spec(
        nano_dy,
        [
            {
                "name": "f",
                "files": [str(friend_path)],
                "tree": "Friends",
                "columns": ["sf", "Jet_sf"],
                "prefix": "f_",
                "how": "outer",
            }
        ],
    )
    left = join_file(spec, str(nano_dy), tmp_path / "left.parquet")
    anti = join_file(spec, str(friend_path), tmp_path / "anti.parquet")
    assert left.events_out == 40
    assert anti.events_out == 5
    assert pq.read_schema(tmp_path / "left.parquet").equals(pq.read_schema(tmp_path / "anti.parquet"))
    union = ak.concatenate([ak.from_parquet(tmp_path / "left.parquet"), ak.from_parquet(tmp_path / "anti.parquet")])
    reference = _outer_reference(nano_dy, friend_path, "outer")
    assert len(union) == len(reference) == 45
    assert _rows(union) == _rows(reference)
    anti_rows = ak.from_parquet(tmp_path / "anti.parquet")
    assert ak.all(ak.is_none(anti_rows.MET_pt)) and ak.all(ak.is_none(anti_rows.Jet_pt))


def test_right_join_runs_over_friend_files(nano_dy: Path, tmp_path: Path) -> None:
    friend_paths = friends.regrouped([nano_dy], tmp_path, n_files=2, drop=0.3)
    spec = _spec(
        nano_dy,
        [
            {
                "name": "f",
                "files": [str(p) for p in friend_paths],
                "tree": "Friends",
                "columns": ["sf", "Jet_sf"],
                "prefix": "f_",
                "how": "right",
            }
        ],
    )
    parts = []
    for number, path in enumerate(friend_paths):
        result = join_file(spec, str(path), tmp_path / f"right_{number}.parquet")
        assert result.events_out == result.events_in
        parts.append(ak.from_parquet(tmp_path / f"right_{number}.parquet"))
    union = ak.concatenate(parts)
    assert len(union) == 28
    assert ak.all(union.f_sf == union.MET_pt * 2)  # every friend row found its primary


def test_right_join_with_primary_cut_treats_cut_rows_as_missing(nano_dy: Path, tmp_path: Path) -> None:
    friend_path = friends.aligned(nano_dy, tmp_path)
    spec = parse_spec(
        {
            "primary": {"files": [str(nano_dy)], "columns": ["MET_pt"], "cut": "MET_pt > 20"},
            "friends": [
                {
                    "name": "f",
                    "files": [str(friend_path)],
                    "tree": "Friends",
                    "columns": ["sf"],
                    "prefix": "f_",
                    "how": "right",
                }
            ],
        }
    )
    join_file(spec, str(friend_path), tmp_path / "right.parquet")
    out = ak.from_parquet(tmp_path / "right.parquet")
    assert len(out) == 40
    passing = ~ak.is_none(out.MET_pt)
    assert ak.all(out.f_sf[passing] / 2 > 20)
    assert ak.all(out.f_sf[~passing] / 2 <= 20)


def test_cut_applies_before_the_join(nano_dy: Path, tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "primary": {"files": [str(nano_dy)], "columns": ["Jet_pt", "MET_pt"], "cut": "(nJet >= 3) & (MET_pt > 15)"},
            "friends": [_friend("sh", [friends.shuffled(nano_dy, tmp_path)])],
        }
    )
    join_file(spec, str(nano_dy), tmp_path / "out.parquet")
    out = ak.from_parquet(tmp_path / "out.parquet")
    primary = friends.read_primary(nano_dy)
    expected = primary[(ak.num(primary.Jet_pt) >= 3) & (primary.MET_pt > 15)]
    assert 0 < len(out) == len(expected) < 40
    assert ak.all(out.event == expected.event)
    _check_values(out, "sh")


def test_duplicate_friend_keys_are_refused_or_first_kept(nano_dy: Path, tmp_path: Path) -> None:
    duplicate = friends.with_duplicate(nano_dy, tmp_path)
    spec = _spec(nano_dy, [_friend("d", [duplicate])])
    with pytest.raises(DuplicateKeyError) as caught:
        join_file(spec, str(nano_dy), tmp_path / "out.parquet")
    assert "duplicate.root" in str(caught.value)
    assert not (tmp_path / "out.parquet").exists()
    spec_first = _spec(nano_dy, [_friend("d", [duplicate])], duplicates="first")
    join_file(spec_first, str(nano_dy), tmp_path / "out.parquet")
    _check_values(ak.from_parquet(tmp_path / "out.parquet"), "d")


def test_a_friend_whose_event_numbers_wrapped_negative_is_refused(nano_dy: Path, tmp_path: Path) -> None:
    # A friend made from a DataFrame keeps the keys as int64; an event number of 2**63 or more comes back
    # negative and would match no primary row. The join is refused, naming the file, the value and its entry.
    keys = uproot.open(nano_dy)["Events"].arrays(KEY, library="np")
    event = keys["event"].astype(np.int64)
    event[7] = -(2**63) + 7
    path = tmp_path / "signed_friend.root"
    write_tree(path, "Friends", {"run": keys["run"].astype(np.int64),
                                 "luminosityBlock": keys["luminosityBlock"].astype(np.int64), "event": event,
                                 "sf": np.ones(len(event), np.float32)})
    spec = parse_spec({"primary": {"files": [str(nano_dy)], "columns": ["MET_pt"]},
                       "friends": [{"name": "s", "files": [str(path)], "tree": "Friends", "columns": ["sf"]}]})
    with pytest.raises(KeyTypeError, match=r"signed_friend.root \[Friends\] holds a negative value .* at entry 7\)"):
        join_file(spec, str(nano_dy), tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_tampered_friend_is_caught_by_the_integrity_check(nano_dy: Path, tmp_path: Path) -> None:
    good = friends.shuffled(nano_dy, tmp_path, seed=4)
    spec = _spec(nano_dy, [_friend("t", [good])])
    indexes = resolve_friend_indexes(spec)  # the index is built while the file is good...
    tampered = friends.tampered(nano_dy, tmp_path)
    shutil.copy(tampered, good)  # ...then the file changes under it
    with pytest.raises(KeyMismatchError, match="integrity check failed for friend 't'"):
        join_file(spec, str(nano_dy), tmp_path / "out.parquet", indexes=indexes)
    assert not (tmp_path / "out.parquet").exists()


def test_tampered_aligned_friend_falls_back_to_the_merge(nano_dy: Path, tmp_path: Path) -> None:
    spec = _spec(nano_dy, [_friend("t", [friends.tampered(nano_dy, tmp_path, row=5)])])
    join_file(spec, str(nano_dy), tmp_path / "out.parquet")
    out = ak.from_parquet(tmp_path / "out.parquet")
    assert ak.sum(~out.t_matched) == 1  # the tampered row pairs with nothing, never with another event
    _check_values(out, "t")


@pytest.mark.parametrize("wide_keys", [False, True], ids=["packed", "wider than 64 bits"])
def test_primary_duplicates_are_found_when_no_friend_needs_its_sorted_keys(
    nano_dy: Path, tmp_path: Path, wide_keys: bool
) -> None:
    # no friend (or only aligned ones): the file's own keys are checked on their packed form, chunk by chunk
    events = friends.read_primary(nano_dy)
    rows = np.concatenate([np.arange(len(events)), [3]])
    events = events[rows]
    columns = {name: events[name] for name in [*KEY, "MET_pt"]}
    key = KEY
    if wide_keys:
        # a key column spanning all of int64 beside the event number cannot be packed into 64 bits
        columns["wide"] = np.where(np.arange(len(events)) % 2 == 0, -(2**62), 2**62).astype(np.int64)
        columns["wide"][-1] = columns["wide"][3]
        key = ["wide", "event"]
    primary = tmp_path / "nano_dup.root"
    write_tree(primary, "Events", columns)
    spec = parse_spec({"primary": {"files": [str(primary)], "columns": ["MET_pt"]}, "key": key})
    with pytest.raises(DuplicateKeyError, match=f"event|{int(events.event[3])}"):
        join_file(spec, str(primary), tmp_path / "refused.parquet", chunk_entries=7)
    assert not (tmp_path / "refused.parquet").exists()
    first = parse_spec({"primary": {"files": [str(primary)], "columns": ["MET_pt"]}, "key": key,
                        "duplicates": "first"})
    result = join_file(first, str(primary), tmp_path / "first.parquet", chunk_entries=7)
    table = pq.read_table(tmp_path / "first.parquet")
    assert result.events_out == table.num_rows == len(events) - 1
    assert table.column("event").to_pylist() == events.event[:-1].to_list()


@pytest.mark.parametrize("shape", ["aligned", "reordered"])
def test_a_per_object_friend_column_must_match_its_collection(nano_dy: Path, tmp_path: Path, shape: str) -> None:
    # a friend made for another jet selection: one jet fewer in every other event
    events = friends.read_primary(nano_dy)
    short = ak.local_index(events.Jet_pt) < ak.num(events.Jet_pt) - (np.arange(len(events)) % 2 == 0)
    events = ak.with_field(events, events.Jet_pt[short], "Jet_pt")
    if shape == "reordered":
        events = events[np.random.default_rng(3).permutation(len(events))]
    friend = friends.write_friend(tmp_path / "other_selection.root", events)
    columns = {"files": [str(nano_dy)], "columns": ["Jet_pt", "nJet", "MET_pt"]}
    joined = {"name": "f", "files": [str(friend)], "tree": "Friends", "columns": ["Jet_sf"]}
    spec = parse_spec({"primary": columns, "friends": [joined]})
    with pytest.raises(CollectionLengthError, match=r"'Jet_sf' joins the collection counted by 'nJet'") as caught:
        join_file(spec, str(nano_dy), tmp_path / "refused.parquet")
    assert caught.value.total == sum(1 for n in ak.num(friends.read_primary(nano_dy).Jet_pt)[::2] if n > 0)
    assert not (tmp_path / "refused.parquet").exists()
    # a prefix keeps the column apart from the collection: then its own lengths are fine
    spec = parse_spec({"primary": columns, "friends": [{**joined, "prefix": "f_"}]})
    join_file(spec, str(nano_dy), tmp_path / "kept.parquet")
    assert pq.read_table(tmp_path / "kept.parquet").column("f_Jet_sf").type.value_type == pa.float32()


def test_empty_tree_gives_zero_rows_with_the_full_schema(data_dir: Path, nano_dy: Path, tmp_path: Path) -> None:
    empty = data_dir / "nano_dy_empty.root"
    spec = _spec(empty, [_friend("sh", [friends.shuffled(nano_dy, tmp_path)])])
    result = join_file(spec, str(empty), tmp_path / "out.parquet")
    assert result.events_out == 0
    reference = tmp_path / "ref.parquet"
    join_file(_spec(nano_dy, [_friend("sh", [friends.shuffled(nano_dy, tmp_path)])]), str(nano_dy), reference)
    assert (
        pq.read_schema(tmp_path / "out.parquet").remove_metadata().equals(pq.read_schema(reference).remove_metadata())
    )


def test_missing_key_branch_is_named(data_dir: Path, nano_dy: Path, tmp_path: Path) -> None:
    spec = _spec(data_dir / "missing_luminosityBlock.root", [_friend("sh", [friends.shuffled(nano_dy, tmp_path)])])
    with pytest.raises(MissingColumnError, match="luminosityBlock"):
        join_file(spec, str(data_dir / "missing_luminosityBlock.root"), tmp_path / "out.parquet")


def test_corrupt_and_missing_files_are_input_errors(nano_dy: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(nano_dy.read_bytes()[:50_000])
    spec = _spec(truncated, [])
    with pytest.raises(InputFileError, match=r"truncated\.root"):
        join_file(spec, str(truncated), tmp_path / "out.parquet")
    with pytest.raises(InputFileError, match="no such file"):
        join_file(spec, str(tmp_path / "nothing.root"), tmp_path / "out.parquet")
    assert list(tmp_path.glob("*.parquet")) == []


def test_column_collision_needs_a_prefix(nano_dy: Path, tmp_path: Path) -> None:
    friend = friends.aligned(nano_dy, tmp_path)
    spec = parse_spec(
        {
            "primary": {"files": [str(nano_dy)], "columns": ["Jet_pt"]},
            "friends": [{"name": "a", "files": [str(friend)], "tree": "Friends", "columns": ["Jet_*"]}],
        }
    )
    join_file(spec, str(nano_dy), tmp_path / "ok.parquet")  # Jet_sf joins the Jet collection
    spec_clash = parse_spec(
        {
            "primary": {"files": [str(nano_dy)], "columns": ["Jet_pt"]},
            "friends": [{"name": "a", "files": [str(friend)], "tree": "Friends", "columns": ["nJet"]}],
        }
    )
    with pytest.raises(SchemaError, match="prefix"):
        join_file(spec_clash, str(nano_dy), tmp_path / "out.parquet")


def test_parquet_friend_from_a_previous_output(nano_dy: Path, tmp_path: Path) -> None:
    first = _spec(nano_dy, [_friend("al", [friends.aligned(nano_dy, tmp_path)])])
    join_file(first, str(nano_dy), tmp_path / "previous.parquet")
    spec = parse_spec(
        {
            "primary": {"files": [str(nano_dy)], "columns": ["MET_pt"]},
            "friends": [
                {"name": "prev", "files": [str(tmp_path / "previous.parquet")], "columns": ["al_sf"], "prefix": "p_"}
            ],
        }
    )
    join_file(spec, str(nano_dy), tmp_path / "out.parquet")
    out = ak.from_parquet(tmp_path / "out.parquet")
    assert ak.all(out.p_al_sf == out.MET_pt * 2)


def test_root_file_output(nano_dy: Path, tmp_path: Path) -> None:
    spec = _spec(nano_dy, [_friend("sh", [friends.shuffled(nano_dy, tmp_path, drop=0.1)])])
    result = join_file(spec, str(nano_dy), tmp_path / "out.root", output_format=OutputFormat.ROOT)
    tree = uproot.open(tmp_path / "out.root")["servicex"]
    assert tree.num_entries == 40 == result.events_out
    assert {"run", "event", "nJet", "Jet_pt", "MET_pt", "sh_sf", "sh_matched"} <= set(tree.keys())
    arrays = tree.arrays()
    assert ak.all(arrays.Jet_pt == friends.read_primary(nano_dy).Jet_pt)
    matched = arrays.sh_matched
    assert ak.all(arrays.sh_sf[matched] == arrays.MET_pt[matched] * 2)
    assert result.output_bytes == (tmp_path / "out.root").stat().st_size
    # the primary's Runs tree travels along (Parquet keeps it in its metadata): what MC is normalised with
    runs = uproot.open(tmp_path / "out.root")["Runs"].arrays()
    assert ak.to_list(runs) == ak.to_list(uproot.open(nano_dy)["Runs"].arrays())


def test_atlas_physlite_keys(data_dir: Path, tmp_path: Path) -> None:
    physlite = data_dir / "PHYSLITE_example.root"
    keys = ["EventInfoAuxDyn.runNumber", "EventInfoAuxDyn.eventNumber"]
    events = uproot.open(physlite)["CollectionTree"].arrays(keys, library="np")
    rows = np.random.default_rng(3).permutation(100)[:80]
    friend = tmp_path / "atlas_friend.parquet"
    import pyarrow as pa

    pq.write_table(
        pa.table(
            {
                keys[0]: events[keys[0]][rows],
                keys[1]: events[keys[1]][rows],
                "score": (events[keys[1]][rows] % 100).astype(np.float32),
            }
        ),
        friend,
    )
    spec = parse_spec(
        {
            "primary": {"files": [str(physlite)], "columns": ["EventInfoAuxDyn.mcChannelNumber"]},
            "key": "atlas",
            "friends": [{"name": "s", "files": [str(friend)], "columns": ["score"]}],
        }
    )
    join_file(spec, str(physlite), tmp_path / "out.parquet")
    out = ak.from_parquet(tmp_path / "out.parquet")
    assert len(out) == 100 and ak.sum(out.s_matched) == 80
    matched = out[out.s_matched]
    assert ak.all(matched.score == matched[keys[1]] % 100)


def test_regrouped_friend_over_two_primary_files(data_dir: Path, tmp_path: Path) -> None:
    primaries = [data_dir / "nano_dy.root", data_dir / "nano_tt_v12.root"]
    friend_paths = friends.regrouped(primaries, tmp_path, n_files=3, drop=0.1)
    spec = parse_spec(
        {
            "primary": {"files": [str(p) for p in primaries], "columns": ["Jet_pt", "MET_pt"]},
            "friends": [_friend("rg", friend_paths)],
        }
    )
    total = 0
    for number, primary in enumerate(primaries):
        result = join_file(spec, str(primary), tmp_path / f"out{number}.parquet", role=Role.PRIMARY)
        _check_values(ak.from_parquet(tmp_path / f"out{number}.parquet"), "rg")
        total += result.matched["rg"]
    assert total == round(240 * 0.9)


def test_rntuple_primary_and_rntuple_friend(data_dir: Path, tmp_path: Path) -> None:
    primary = data_dir / "nano_dy_rntuple.root"
    events = uproot.open(data_dir / "nano_dy.root")["Events"].arrays([*KEY, "MET_pt"])
    friend = tmp_path / "rntuple_friend.root"
    with uproot.recreate(friend) as handle:  # uproot writes a dict as an RNTuple
        handle["Events"] = {
            "run": events.run,
            "luminosityBlock": events.luminosityBlock,
            "event": events.event,
            "sf": events.MET_pt * 2,
        }
    spec = parse_spec(
        {
            "primary": {"files": [str(primary)], "columns": ["Jet_pt", "MET_pt"]},
            "friends": [{"name": "r", "files": [str(friend)], "columns": ["sf"]}],
        }
    )
    result = join_file(spec, str(primary), tmp_path / "out.parquet")
    out = ak.from_parquet(tmp_path / "out.parquet")
    assert result.matched == {"r": 40}
    assert ak.all(out.sf == out.MET_pt * 2)


def test_every_column_of_an_rntuple_primary(data_dir: Path, tmp_path: Path) -> None:
    """`columns: ["*"]` of the RNTuple copy of nano_dy gives what it gives for the TTree itself: the RNTuple's
    record fields that hold its collections (`_collection0`) are not columns."""
    outputs = {}
    for name in ("nano_dy.root", "nano_dy_rntuple.root"):
        spec = parse_spec({"primary": {"files": [str(data_dir / name)], "columns": ["*"]}})
        assert join_file(spec, str(data_dir / name), tmp_path / f"{name}.parquet").events_out == 40
        outputs[name] = ak.from_parquet(tmp_path / f"{name}.parquet")
    tree, rntuple = outputs["nano_dy.root"], outputs["nano_dy_rntuple.root"]
    assert set(rntuple.fields) == set(tree.fields) and not any(f.startswith("_collection") for f in rntuple.fields)
    for column in ("event", "nJet", "Jet_pt", "PSWeight", "nPSWeight", "LHEPdfWeight", "MET_pt"):
        assert ak.to_list(rntuple[column]) == ak.to_list(tree[column]), column


@pytest.mark.parametrize("name", ["nano_dy.root", "nano_dy_rntuple.root"])
def test_root_output_of_a_list_named_before_its_counter(data_dir: Path, tmp_path: Path, name: str) -> None:
    """A list of its own (`PSWeight`) asked for before its counter: the ROOT output writes the counter once."""
    spec = parse_spec({"primary": {"files": [str(data_dir / name)], "columns": ["PSWeight", "nPSWeight", "MET_pt"]}})
    join_file(spec, str(data_dir / name), tmp_path / "out.root", output_format=OutputFormat.ROOT)
    out = uproot.open(tmp_path / "out.root")["servicex"]
    assert out.keys().count("nPSWeight") == 1
    expected = uproot.open(data_dir / "nano_dy.root")["Events"].arrays(["PSWeight", "nPSWeight"])
    assert ak.to_list(out["PSWeight"].array()) == ak.to_list(expected.PSWeight)
    assert ak.to_list(out["nPSWeight"].array()) == ak.to_list(expected.nPSWeight)


def _flat_atlas_friend(physlite: Path, path: Path, rows: np.ndarray) -> np.ndarray:
    """A flat ATLAS ntuple of 80 of the PHYSLITE file's events, shuffled, keyed `runNumber`/`eventNumber`."""
    keys = ["EventInfoAuxDyn.runNumber", "EventInfoAuxDyn.eventNumber"]
    events = uproot.open(physlite)["CollectionTree"].arrays(keys, library="np")
    with uproot.recreate(path) as out:
        out.mktree("nominal", {"runNumber": np.int32, "eventNumber": np.uint64, "score": np.float32})
        out["nominal"].extend({
            "runNumber": events[keys[0]][rows].astype(np.int32),  # another integer type than the primary's
            "eventNumber": events[keys[1]][rows],
            "score": (events[keys[1]][rows] % 100).astype(np.float32),
        })
    return events[keys[1]]


@pytest.mark.parametrize("output_format", [OutputFormat.PARQUET, OutputFormat.ROOT])
def test_atlas_friend_with_flat_key_branches(data_dir: Path, tmp_path: Path, output_format: OutputFormat) -> None:
    physlite = data_dir / "PHYSLITE_example.root"
    rows = np.random.default_rng(5).permutation(100)[:80]
    event_numbers = _flat_atlas_friend(physlite, tmp_path / "ntuple.root", rows)
    spec = parse_spec(
        {
            "primary": {"files": [str(physlite)], "columns": ["AnalysisElectronsAuxDyn.pt"]},
            "key": "atlas",
            "friends": [{"name": "s", "files": [str(tmp_path / "ntuple.root")], "tree": "nominal", "columns": ["*"]}],
        }
    )
    out_path = tmp_path / ("out.parquet" if output_format is OutputFormat.PARQUET else "out.root")
    result = join_file(spec, str(physlite), out_path, output_format=output_format)
    if output_format is OutputFormat.PARQUET:
        out = ak.from_parquet(out_path)
    else:
        out = uproot.open(out_path)["servicex"].arrays()
    # the key keeps the spec's names; the friend's own key branches are not copied as data
    assert "runNumber" not in out.fields and "eventNumber" not in out.fields
    assert {"EventInfoAuxDyn.runNumber", "EventInfoAuxDyn.eventNumber", "score", "s_matched"} <= set(out.fields)
    assert np.array_equal(ak.to_numpy(out["EventInfoAuxDyn.eventNumber"]), event_numbers)
    assert result.events_out == 100 and ak.sum(out.s_matched) == 80
    matched = out[out.s_matched]
    assert ak.all(matched.score == matched["EventInfoAuxDyn.eventNumber"] % 100)
    assert set(ak.to_numpy(matched["EventInfoAuxDyn.eventNumber"])) == set(event_numbers[rows])


def test_a_friend_names_its_own_key_branches(nano_dy: Path, tmp_path: Path) -> None:
    events = friends.read_primary(nano_dy)
    rows = np.random.default_rng(2).permutation(len(events))[:30]
    shuffled = events[rows]
    renamed = {"RUN": shuffled.run, "LUMI": shuffled.luminosityBlock, "EVT": shuffled.event,
               "sf": shuffled.MET_pt * 2}
    write_tree(tmp_path / "renamed.root", "Friends", renamed, compression=uproot.ZLIB(1))
    pq.write_table(pa.table({k: ak.to_numpy(v) for k, v in renamed.items()}), tmp_path / "renamed.parquet")
    for name in ("renamed.root", "renamed.parquet"):
        spec = _spec(nano_dy, [{"name": "r", "files": [str(tmp_path / name)], "tree": "Friends", "columns": ["*"],
                                "key": ["RUN", "LUMI", "EVT"]}])
        join_file(spec, str(nano_dy), tmp_path / "out.parquet")
        out = ak.from_parquet(tmp_path / "out.parquet")
        assert not {"RUN", "LUMI", "EVT"} & set(out.fields), name
        assert ak.sum(out.r_matched) == 30, name
        assert ak.all(out.sf[out.r_matched] == out.MET_pt[out.r_matched] * 2), name
        assert ak.all(ak.is_none(out.sf[~out.r_matched])), name


def test_a_friend_without_the_key_under_any_name_is_refused(data_dir: Path, tmp_path: Path) -> None:
    physlite = data_dir / "PHYSLITE_example.root"
    with uproot.recreate(tmp_path / "nokey.root") as out:
        out["nominal"] = {"RunNumber": np.zeros(3, np.int32), "EventNumber": np.arange(3, dtype=np.uint64)}
    spec = parse_spec(
        {
            "primary": {"files": [str(physlite)], "columns": ["AnalysisElectronsAuxDyn.pt"]},
            "key": "atlas",
            "friends": [{"name": "s", "files": [str(tmp_path / "nokey.root")], "tree": "nominal", "columns": ["*"]}],
        }
    )
    with pytest.raises(MissingColumnError) as caught:
        join_file(spec, str(physlite), tmp_path / "out.parquet")
    message = str(caught.value)
    assert "'EventInfoAuxDyn.runNumber' (nor runNumber)" in message
    assert "nokey.root" in message and message.count("nokey.root") == 1  # the file named once


@pytest.mark.parametrize("how", ["right", "outer"])
def test_right_and_outer_parts_read_a_friend_by_its_own_key_names(nano_dy: Path, tmp_path: Path, how: str) -> None:
    events = friends.read_primary(nano_dy)
    lonely = np.array([10**9 + 1, 10**9 + 2], dtype=np.uint64)  # two friend events the primary lacks
    renamed = {
        "RUN": np.concatenate([ak.to_numpy(events.run[5:]), np.ones(2, np.uint32)]),
        "LUMI": np.concatenate([ak.to_numpy(events.luminosityBlock[5:]), np.ones(2, np.uint32)]),
        "EVT": np.concatenate([ak.to_numpy(events.event[5:]), lonely]),
        "sf": np.concatenate([ak.to_numpy(events.MET_pt[5:] * 2), [7.0, 8.0]]).astype(np.float32),
    }
    with uproot.recreate(tmp_path / "renamed.root") as out:
        out["Friends"] = renamed
    spec = _spec(nano_dy, [{"name": "r", "files": [str(tmp_path / "renamed.root")], "tree": "Friends",
                            "columns": ["*"], "how": how, "key": ["RUN", "LUMI", "EVT"]}])
    result = join_file(spec, str(tmp_path / "renamed.root"), tmp_path / "part.parquet")
    part = ak.from_parquet(tmp_path / "part.parquet")
    assert not {"RUN", "LUMI", "EVT"} & set(part.fields)
    if how == "right":  # every friend row, with its primary where there is one
        assert result.events_out == len(part) == 37
        found = ~ak.is_none(part.MET_pt)
        assert ak.sum(found) == 35 and ak.all(part.sf[found] == part.MET_pt[found] * 2)
    else:  # the anti part: only the friend rows without a primary, under the spec's key names
        assert len(part) == 2 and sorted(ak.to_list(part.event)) == lonely.tolist()
        assert ak.to_list(part.sf) == [7.0, 8.0]


def test_patterns_over_an_xaod_file_take_the_readable_branches(data_dir: Path, tmp_path: Path) -> None:
    """PHYSLITE holds branches no array can (split-object parents, element-link maps, member-less base
    classes): a pattern passes them by, so `*` joins every column there is."""
    physlite = data_dir / "PHYSLITE_example.root"
    spec = parse_spec({"primary": {"files": [str(physlite)], "columns": ["*"]}, "key": "atlas"})
    assert join_file(spec, str(physlite), tmp_path / "all.parquet").events_out == 100
    columns = set(pq.read_schema(tmp_path / "all.parquet").names)
    assert {"AnalysisElectronsAuxDyn.pt", "AnalysisJetsAuxDyn.NumTrkPt500", "EventInfoAuxDyn.eventNumber"} <= columns
    assert not {"EventInfoAux.", "METAssoc_AnalysisMET", "AnalysisElectrons"} & columns
    only_objects = parse_spec({"primary": {"files": [str(physlite)], "columns": ["METAssoc_AnalysisMET"]},
                               "key": "atlas"})
    with pytest.raises(InputFileError, match="METAssoc_AnalysisMET"):  # asked for by name: read, and refused
        join_file(only_objects, str(physlite), tmp_path / "objects.parquet")


def test_root_output_takes_from_a_pattern_what_a_ttree_can_hold(data_dir: Path, tmp_path: Path) -> None:
    """`AnalysisJetsAuxDyn.*` in PHYSLITE also matches lists of lists (`NumTrkPt500`) and element links: a
    TTree written by uproot cannot hold them, so ROOT output leaves them out (and lists them in its metadata),
    and refuses one asked for by name, naming it; Parquet holds them all."""
    physlite = data_dir / "PHYSLITE_example.root"
    spec = parse_spec({"primary": {"files": [str(physlite)], "columns": ["AnalysisJetsAuxDyn.*"]}, "key": "atlas"})
    join_file(spec, str(physlite), tmp_path / "out.root", output_format=OutputFormat.ROOT)
    handle = uproot.open(tmp_path / "out.root")
    branches = set(handle["servicex"].keys())
    assert {"AnalysisJetsAuxDyn.pt", "AnalysisJetsAuxDyn.eta"} <= branches
    assert "AnalysisJetsAuxDyn.NumTrkPt500" not in branches
    left_out = json.loads(handle["servicex_joiner_metadata"])["left_out"]
    assert len(left_out) == 7 and "AnalysisJetsAuxDyn.NumTrkPt500" in left_out
    assert ak.all(handle["servicex"]["AnalysisJetsAuxDyn.pt"].array()
                  == uproot.open(physlite)["CollectionTree"]["AnalysisJetsAuxDyn.pt"].array())
    join_file(spec, str(physlite), tmp_path / "out.parquet")  # Parquet: every matched column
    assert "AnalysisJetsAuxDyn.NumTrkPt500" in pq.read_schema(tmp_path / "out.parquet").names

    by_name = parse_spec({"primary": {"files": [str(physlite)], "columns": ["AnalysisJetsAuxDyn.NumTrkPt500"]},
                          "key": "atlas"})
    with pytest.raises(SchemaError, match=r"ROOT output cannot hold 1 column\(s\): AnalysisJetsAuxDyn.NumTrkPt500"):
        join_file(by_name, str(physlite), tmp_path / "named.root", output_format=OutputFormat.ROOT)
    assert not (tmp_path / "named.root").exists()


def test_friends_over_http_do_not_get_the_object_store_options(
    nano_dy: Path, tmp_path: Path, http_files: HttpFiles
) -> None:
    """http(s):// friends (a WebDAV door, an XCache) are read while object-store options are set (as in the
    worker): those go to s3:// files only."""
    events = friends.read_primary(nano_dy)
    friend = friends.write_friend(http_files.root / "sf.root", events[::-1])
    pq.write_table(
        pa.table({name: ak.to_numpy(events[name]) for name in KEY} | {"psf": ak.to_numpy(events.MET_pt * 2)}),
        http_files.root / "sf.parquet",
    )
    spec = _spec(nano_dy, [
        {"name": "h", "files": [http_files.url(friend.name)], "tree": "Friends", "columns": ["sf"]},
        {"name": "p", "files": [http_files.url("sf.parquet")], "columns": ["psf"]},
    ])
    s3_options = {"key": "AK", "secret": "SK", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    result = join_file(spec, str(nano_dy), tmp_path / "out.parquet", storage_options=s3_options)
    out = ak.from_parquet(tmp_path / "out.parquet")
    assert result.matched == {"h": 40, "p": 40}
    assert ak.all(out.sf == out.MET_pt * 2) and ak.all(out.psf == out.MET_pt * 2)
