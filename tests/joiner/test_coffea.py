"""Outputs read by coffea's NanoEvents (NanoAODSchema), in both `fill_missing` modes (DESIGN §4)."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import pytest

from joiner.engine import join_file
from joiner.spec import parse_spec
from tests.joiner import friends

# coffea warns about its own optional parts (dask, schema guesses) on import and read
pytestmark = pytest.mark.filterwarnings("ignore")


def _spec(nano_dy: Path, friend: Path, **extra) -> object:
    return parse_spec(
        {
            "primary": {
                "files": [str(nano_dy)],
                "columns": ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "MET_pt", "MET_phi"],
            },
            "friends": [{"name": "sh", "files": [str(friend)], "tree": "Friends", "columns": ["sf", "Jet_sf"]}],
            **extra,
        }
    )


def _events(path: Path) -> ak.Array:
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    return NanoEventsFactory.from_parquet(str(path), schemaclass=NanoAODSchema, mode="eager").events()


def _jet_sf(path: Path) -> list:
    return _events(path).Jet.sf.tolist()


def test_fill_missing_nan_reads_in_coffea_with_the_friend_joining_the_collection(nano_dy: Path, tmp_path: Path) -> None:
    friend = friends.shuffled(nano_dy, tmp_path, drop=0.1)
    join_file(_spec(nano_dy, friend, fill_missing="nan"), str(nano_dy), tmp_path / "out.parquet")
    events = _events(tmp_path / "out.parquet")
    matched = events.sh.matched
    assert ak.sum(~matched) == 4
    assert ak.all(events.Jet.sf[matched] == events.Jet.pt[matched] * 0.5)  # Jet_sf -> events.Jet.sf
    assert ak.all(ak.num(events.Jet.sf) == ak.num(events.Jet.pt))
    assert ak.all(ak.is_none(ak.nan_to_none(ak.flatten(events.Jet.sf[~matched]))))
    assert ak.all(events.sf[matched] == events.MET.pt[matched] * 2)


def test_default_nulls_make_coffea_refuse_loudly_but_read_in_awkward(nano_dy: Path, tmp_path: Path) -> None:
    friend = friends.shuffled(nano_dy, tmp_path, drop=0.1)
    join_file(_spec(nano_dy, friend), str(nano_dy), tmp_path / "out.parquet")
    out = ak.from_parquet(tmp_path / "out.parquet")
    assert ak.sum(ak.is_none(out.Jet_sf)) == 4
    with pytest.raises((TypeError, ValueError)):
        _jet_sf(tmp_path / "out.parquet")


def test_fully_matched_output_reads_in_coffea(nano_dy: Path, tmp_path: Path) -> None:
    join_file(_spec(nano_dy, friends.aligned(nano_dy, tmp_path)), str(nano_dy), tmp_path / "out.parquet")
    events = _events(tmp_path / "out.parquet")
    assert ak.all(events.Jet.sf == events.Jet.pt * 0.5)
    assert len(events) == 40


def test_fill_missing_nan_refuses_integer_lists(nano_dy: Path, tmp_path: Path) -> None:
    from joiner.errors import SchemaError

    spec_bad = parse_spec(
        {
            "primary": {"files": [str(nano_dy)], "columns": ["Jet_pt"]},
            "friends": [{"name": "sh", "files": [str(nano_dy)], "columns": ["Jet_jetId"], "prefix": "x_"}],
            "fill_missing": "nan",
        }
    )
    with pytest.raises(SchemaError, match="Jet_jetId"):
        join_file(spec_bad, str(nano_dy), tmp_path / "bad.parquet")
