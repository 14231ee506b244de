"""`primary.cut` means the same on an RNTuple primary as on a TTree (uproot evaluates expressions on TTrees
only; `joiner.cuts` does it for RNTuples): the same events are kept from the same data in either form."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import pytest

from joiner.engine import join_file
from joiner.errors import SpecError
from joiner.spec import parse_spec


def _kept_events(primary: Path, cut: str, out: Path) -> list[int]:
    spec = parse_spec({"primary": {"files": [str(primary)], "columns": ["MET_pt", "Jet_pt"], "cut": cut}})
    join_file(spec, str(primary), out)
    return ak.from_parquet(out).event.to_list()


@pytest.mark.parametrize(
    "cut",
    [
        "MET_pt > 20",
        "(nJet >= 2) & (MET_pt > 10)",
        "sqrt(MET_pt) > 4.5",
        "(abs(MET_phi) < 1) | ~(nMuon > 0)",
        "event % 3 == 0",
    ],
)
def test_an_rntuple_primary_keeps_the_events_its_ttree_twin_keeps(data_dir: Path, tmp_path: Path, cut: str) -> None:
    from_ttree = _kept_events(data_dir / "nano_dy.root", cut, tmp_path / "ttree.parquet")
    from_rntuple = _kept_events(data_dir / "nano_dy_rntuple.root", cut, tmp_path / "rntuple.parquet")
    assert 0 < len(from_ttree) < 40
    assert from_rntuple == from_ttree


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        ("Jet_pt > 30", "one boolean per event"),
        ("no_such_field > 3", "no_such_field"),
        ("MET_pt >", "cannot be evaluated"),
    ],
)
def test_a_cut_an_rntuple_cannot_take_is_refused_naming_it(
    data_dir: Path, tmp_path: Path, cut: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message) as caught:
        _kept_events(data_dir / "nano_dy_rntuple.root", cut, tmp_path / "out.parquet")
    assert cut in str(caught.value)
    assert not (tmp_path / "out.parquet").exists()
