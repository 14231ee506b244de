"""Inference in the join itself: `join_file` with a Triton producer, and `servicex-joiner join` with
`TRITON_URL` (gRPC and HTTP), on a real NanoAOD sample and a friend that misses some events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import uproot
import yaml
from prometheus_client import CollectorRegistry

from joiner.engine import join_file
from joiner.spec import parse_spec
from joiner.writing import METADATA_KEY
from tests.fixtures.triton import TritonServer
from transformer.inference import build_producers

from .helpers import REPO, jagged, jet_mlp_reference

pytestmark = pytest.mark.integration

KEYS = ["run", "luminosityBlock", "event"]


def write_friend(nano: Path, target: Path) -> np.ndarray:
    """A Parquet friend with a per-jet `Jet_sf` for 3 events of 4 (returns which primary rows it has)."""
    events = uproot.open(nano)["Events"].arrays([*KEYS, "nJet"], library="np")
    keep: np.ndarray = np.arange(len(events["event"])) % 4 != 1
    counts = events["nJet"][keep].astype(np.int64)
    sf = 0.9 + 0.001 * np.arange(int(counts.sum()), dtype=np.float32)
    table = pa.table({k: pa.array(events[k][keep]) for k in KEYS})
    pq.write_table(table.append_column("Jet_sf", jagged(counts, sf)), target)
    return keep


def spec_data(nano: Path, friend: Path) -> dict[str, object]:
    return {
        "primary": {"files": [str(nano)], "columns": ["nJet", "Jet_pt", "Jet_eta", "Jet_phi", "MET_pt"]},
        "key": "cms",
        "friends": [{"name": "calib", "files": [str(friend)], "columns": ["Jet_sf"], "how": "left"}],
        "inference": [
            {
                "model": "jet_mlp",
                "version": 1,
                "level": "Jet",
                "inputs": {"INPUT__0": ["Jet_pt", "Jet_sf", "Jet_phi"]},  # a friend column among the inputs
                "outputs": {"OUTPUT__0": "Jet_score"},
            }
        ],
    }


def check_output(path: Path, keep: np.ndarray, server_url: str) -> None:
    table = pq.read_table(path)
    key_values = pq.ParquetFile(path).metadata.metadata
    scores = table.column("Jet_score").combine_chunks()
    matched = table.column("calib_matched").to_numpy(zero_copy_only=False)
    assert matched.tolist() == keep.tolist()
    assert scores.is_valid().to_numpy(zero_copy_only=False).tolist() == keep.tolist()  # unmatched: list null
    assert pc.list_value_length(scores).to_numpy(zero_copy_only=False)[keep].tolist() == (
        table.column("nJet").to_numpy()[keep].tolist()
    )
    rows = table.filter(pa.array(keep))
    features = np.stack(
        [rows.column(c).combine_chunks().flatten().to_numpy() for c in ("Jet_pt", "Jet_sf", "Jet_phi")],
        axis=1,
    )
    np.testing.assert_allclose(scores.flatten().to_numpy(), jet_mlp_reference(features), rtol=1e-5, atol=1e-6)
    metadata = json.loads(key_values[METADATA_KEY.encode()])
    (producer,) = metadata["producers"]
    assert producer["server"] == server_url
    model = producer["models"][0]
    assert (model["model"], model["version"], model["served_versions"]) == ("jet_mlp", "1", ["1"])


def test_join_file_with_inference(triton_server: TritonServer, nano_tt: Path, tmp_path: Path) -> None:
    friend = tmp_path / "calib.parquet"
    keep = write_friend(nano_tt, friend)
    spec = parse_spec(spec_data(nano_tt, friend))
    producers = build_producers(spec, triton_server.grpc_url, registry=CollectorRegistry())
    try:
        result = join_file(spec, str(nano_tt), tmp_path / "out.parquet", producers=producers, chunk_entries=64)
    finally:
        for producer in producers:
            producer.close()  # type: ignore[attr-defined]
    assert result.events_out == len(keep)
    check_output(tmp_path / "out.parquet", keep, f"grpc://{triton_server.grpc_url}")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_join_command_reads_triton_url(
    triton_server: TritonServer, nano_tt: Path, tmp_path: Path, protocol: str
) -> None:
    friend = tmp_path / "calib.parquet"
    keep = write_friend(nano_tt, friend)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data(nano_tt, friend)))
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    env = dict(os.environ, TRITON_URL=url)
    command = [sys.executable, "-m", "transformer.cli", "join", "--spec", str(spec_path), "--output"]
    done = subprocess.run(
        [
            *command,
            str(tmp_path / "out"),
            "--no-progress",
            "--workers",
            "1",
            "--index-cache",
            str(tmp_path / "c"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (output,) = (tmp_path / "out").glob("*.parquet")
    check_output(output, keep, f"grpc://{url}" if protocol == "grpc" else url)


def test_join_command_refuses_a_spec_that_does_not_fit_the_model(
    triton_server: TritonServer, nano_tt: Path, tmp_path: Path
) -> None:
    friend = tmp_path / "calib.parquet"
    write_friend(nano_tt, friend)
    data = spec_data(nano_tt, friend)
    data["inference"][0]["inputs"] = {"WRONG__0": ["Jet_pt", "Jet_sf", "Jet_phi"]}  # type: ignore[index]
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [sys.executable, "-m", "transformer.cli", "join", "--spec", str(spec_path), "--output", str(tmp_path / "out"),
         "--no-progress", "--index-cache", str(tmp_path / "c")],
        cwd=REPO, env=dict(os.environ, TRITON_URL=triton_server.grpc_url),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "WRONG__0" in done.stderr
    assert not list((tmp_path / "out").glob("*.parquet")) if (tmp_path / "out").exists() else True


def test_worker_stops_at_start_when_the_spec_does_not_fit_the_model(
    triton_server: TritonServer, rabbitmq_url: str, nano_tt: Path, tmp_path: Path
) -> None:
    """DESIGN §5: a mismatch stops the worker with a message naming it. The Triton URL here reaches the worker
    only through the generated code's `joiner_settings.json`, as in a ServiceX deployment."""
    friend = tmp_path / "calib.parquet"
    write_friend(nano_tt, friend)
    data = spec_data(nano_tt, friend)
    data["inference"][0]["inputs"] = {"WRONG__0": ["Jet_pt", "Jet_sf", "Jet_phi"]}  # type: ignore[index]
    generated = tmp_path / "generated"
    generated.mkdir()
    (generated / "join_spec.json").write_text(json.dumps(data))
    (generated / "joiner_settings.json").write_text(json.dumps({"TRITON_URL": triton_server.grpc_url}))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "transformer.cli", "worker", "--request-id", "mismatch-test", "--rabbit-uri",
         rabbitmq_url, "--spec", str(generated / "join_spec.json"), "--result-destination", "volume",
         "--output-dir", str(tmp_path / "out")],
        cwd=REPO, env={**env, "JOINER_METRICS_PORT": "0"}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "WRONG__0" in done.stderr
