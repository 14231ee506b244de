"""Reading delivered join outputs back: Parquet and ROOT parts as one awkward array, coffea NanoEvents."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot

from transformer.client.loader import delivered_files, load_events, load_joined, read_file


def write_part(path: Path, events: list[int], jets: list[list[float]], sf: list[list[float] | None]) -> Path:
    """A NanoAOD-style joined part: key, counter, a primary and a friend jagged column, the match flag."""
    floats = pa.list_(pa.field("item", pa.float32(), nullable=False))
    zeros = [[0.0] * len(j) for j in jets]
    table = pa.table(
        {
            "run": pa.array([1] * len(events), pa.uint32()),
            "luminosityBlock": pa.array([7] * len(events), pa.uint32()),
            "event": pa.array(events, pa.uint64()),
            "nJet": pa.array([len(j) for j in jets], pa.int32()),
            "Jet_pt": pa.array(jets, floats),
            "Jet_eta": pa.array(zeros, floats),
            "Jet_phi": pa.array(zeros, floats),
            "Jet_mass": pa.array(zeros, floats),
            "Jet_sf": pa.array(sf, floats),
            "sys_matched": pa.array([s is not None for s in sf], pa.bool_()),
        }
    )
    pq.write_table(table, path)
    return path


def test_parts_of_a_join_read_back_as_one_array(tmp_path: Path) -> None:
    left = write_part(tmp_path / "left.parquet", [1, 2], [[10.0, 20.0], [30.0]], [[1.0, 1.1], None])
    anti = write_part(tmp_path / "anti.parquet", [5], [[]], [[0.9]])
    delivered = {"tt": [str(left)], "tt-anti": [str(anti)], "other": [str(left)]}
    joined = load_joined(delivered, names=["tt", "tt-anti"])
    assert joined["event"].to_list() == [1, 2, 5]
    assert joined["Jet_sf"].to_list() == [pytest.approx([1.0, 1.1]), None, pytest.approx([0.9])]
    assert joined["sys_matched"].to_list() == [True, False, True]
    assert load_joined([left], columns=["event"]).fields == ["event"]
    assert delivered_files(delivered) == [left, anti, left]
    with pytest.raises(KeyError, match="no sample named"):
        load_joined(delivered, names=["nope"])
    with pytest.raises(ValueError, match="no files"):
        load_joined({"tt": []})


def test_root_file_outputs_are_recognised_without_a_suffix(tmp_path: Path) -> None:
    path = tmp_path / "root___eos__p1"  # the client writes ":" as "_"
    with uproot.recreate(path) as file:
        file["servicex"] = {"event": np.array([3, 4], np.uint64), "x": np.array([0.5, 1.5])}
    array = read_file(path)
    assert array["event"].to_list() == [3, 4]
    assert read_file(path, ["x"]).fields == ["x"]
    (tmp_path / "junk").write_bytes(b"nope")
    with pytest.raises(ValueError, match="neither a Parquet file nor a ROOT file"):
        read_file(tmp_path / "junk")


def test_coffea_reads_each_part_as_nanoevents(tmp_path: Path) -> None:
    part = write_part(tmp_path / "left.parquet", [1, 2], [[10.0, 20.0], [30.0]], [[1.0, 1.1], [0.8]])
    (events,) = load_events({"tt": [str(part)]})
    assert ak.to_list(events.Jet.pt) == [pytest.approx([10.0, 20.0]), pytest.approx([30.0])]
    assert ak.to_list(events.Jet.sf) == [pytest.approx([1.0, 1.1]), pytest.approx([0.8])]
    assert ak.to_list(events.event) == [1, 2]
