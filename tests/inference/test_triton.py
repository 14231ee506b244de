"""Inference columns against a real Triton server (tritonserver 2.51 from nvidia-pytriton, CPU).

The example model `examples/models/jet_mlp` is compared with the same MLP in numpy, per jet and per event;
the test-only `event_affine` covers the event level, width-2 outputs, casts and version pinning. Also:
dynamic batching, empty inputs, null rows, a spec that does not fit the model, an unreachable server and
a server killed mid-run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pyarrow as pa
import pytest
import uproot
from prometheus_client import CollectorRegistry

from joiner.spec import InferenceSpec, JoinSpec, load_spec, parse_spec
from tests.fixtures.triton import TritonServer, free_port
from transformer.inference import (
    InferenceError,
    ModelMismatchError,
    ServerUnavailableError,
    TritonColumnProducer,
    build_producers,
    check_spec_against_server,
)

from .helpers import REPO, jagged, jet_features, jet_mlp_reference, random_jets

pytestmark = pytest.mark.integration

JET_ENTRY = {
    "model": "jet_mlp",
    "level": "Jet",
    "inputs": {"INPUT__0": ["Jet_pt", "Jet_eta", "Jet_phi"]},
    "outputs": {"OUTPUT__0": "Jet_score"},
}
EVENT_ENTRY = {
    "model": "event_affine",
    "inputs": {"INPUT__0": ["MET_pt", "MET_phi"]},
    "outputs": {"OUTPUT__0": "met_affine"},
}


def sample(name: str, **changes: Any) -> InferenceSpec:
    data = dict({"jet": JET_ENTRY, "event": EVENT_ENTRY}[name])
    data.update(changes)
    return InferenceSpec.model_validate(data)


def nano_table(path: Path) -> pa.Table:
    names = ["run", "luminosityBlock", "event", "nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "MET_pt", "MET_phi"]
    events = uproot.open(path)["Events"].arrays(names)
    return ak.to_arrow_table(events, extensionarray=False, list_to32=True)


def rows(registry: CollectorRegistry, name: str, model: str = "jet_mlp") -> float:
    return registry.get_sample_value(f"servicex_joiner_inference_{name}", {"model": model}) or 0.0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_jet_scores_match_numpy_on_nanoaod(triton_server: TritonServer, nano_tt: Path, protocol: str) -> None:
    table = nano_table(nano_tt)
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    registry = CollectorRegistry()
    with TritonColumnProducer(sample("jet", batch_size=100), url, registry=registry) as producer:
        out = producer(table)
        description = producer.describe()
    assert out.column_names == [*table.column_names, "Jet_score"]
    assert out.schema.field("Jet_score").type == pa.list_(pa.field("item", pa.float32(), nullable=False))
    expected = jet_mlp_reference(jet_features(table))
    scores = out.column("Jet_score").combine_chunks()
    np.testing.assert_allclose(scores.flatten().to_numpy(), expected, rtol=1e-5, atol=1e-6)
    # per event: the same counts as the jets, and each event's list is that event's jets' scores
    per_event = ak.from_arrow(scores)
    counts = ak.num(ak.from_arrow(table.column("Jet_pt")))
    assert ak.to_list(ak.num(per_event)) == ak.to_list(counts)
    np.testing.assert_allclose(
        ak.to_numpy(ak.flatten(per_event)), ak.to_numpy(ak.flatten(ak.unflatten(expected, counts)))
    )
    n_jets = len(expected)
    assert rows(registry, "rows_total") == n_jets
    assert rows(registry, "batches_total") == -(-n_jets // 100)
    assert rows(registry, "batch_seconds_count") == -(-n_jets // 100)
    assert rows(registry, "retries_total") == 0
    assert description["server"] == (f"grpc://{url}" if protocol == "grpc" else url)
    model = description["models"][0]
    assert (model["model"], model["served_versions"], model["columns"]) == ("jet_mlp", ["1"], ["Jet_score"])


def test_example_spec_is_served(triton_server: TritonServer, nano_tt: Path) -> None:
    spec = load_spec(REPO / "examples" / "jet_mlp.yaml")
    (producer,) = build_producers(spec, triton_server.grpc_url, registry=CollectorRegistry())
    try:
        table = nano_table(nano_tt).select(["nJet", "Jet_pt", "Jet_eta", "Jet_phi", "MET_pt"])
        out = producer(table)
    finally:
        producer.close()  # type: ignore[attr-defined]
    expected = jet_mlp_reference(jet_features(table))
    np.testing.assert_allclose(
        out.column("Jet_score").combine_chunks().flatten().to_numpy(), expected, rtol=1e-5, atol=1e-6
    )
    assert producer.describe()["models"][0]["version"] == "1"


@pytest.mark.filterwarnings("ignore")  # coffea warns about its own optional parts on import and read
def test_scores_read_in_coffea_as_part_of_the_collection(
    triton_server: TritonServer, nano_tt: Path, tmp_path: Path
) -> None:
    """`Jet_score` with the jets' counts is `events.Jet.score` for coffea's NanoAODSchema."""
    import pyarrow.parquet as pq
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    table = nano_table(nano_tt)
    with TritonColumnProducer(sample("jet"), triton_server.grpc_url, registry=CollectorRegistry()) as producer:
        pq.write_table(producer(table), tmp_path / "scores.parquet")
    events = NanoEventsFactory.from_parquet(
        str(tmp_path / "scores.parquet"), schemaclass=NanoAODSchema, mode="eager"
    ).events()
    counts = ak.num(events.Jet.pt)
    assert ak.all(ak.num(events.Jet.score) == counts)
    expected = ak.unflatten(jet_mlp_reference(jet_features(table)), counts)
    assert ak.all(abs(events.Jet.score - expected) < 1e-6)


def test_event_level_width_two_and_versions(triton_server: TritonServer) -> None:
    table = random_jets(1000, seed=3)
    met_pt = table.column("MET_pt").to_numpy().astype(np.float64)
    met_phi = table.column("MET_phi").to_numpy().astype(np.float64)
    registry = CollectorRegistry()
    for version, offset in (("1", 0.0), ("2", 1.0), (None, 1.0)):  # unpinned: the server's latest
        entry = sample("event", version=version, batch_size=300)
        with TritonColumnProducer([entry], triton_server.grpc_url, registry=registry) as producer:
            out = producer(table)
            assert producer.describe()["models"][0]["served_versions"] == [version or "2"]
        assert out.column_names[-2:] == ["met_affine_0", "met_affine_1"]
        assert out.schema.field("met_affine_0").type == pa.float32()
        np.testing.assert_allclose(out.column("met_affine_0").to_numpy(), met_pt + 2 * met_phi + offset, rtol=1e-6)
        np.testing.assert_allclose(out.column("met_affine_1").to_numpy(), met_pt * met_phi, rtol=1e-6)


def test_two_entries_and_null_rows(triton_server: TritonServer) -> None:
    """A left join's unmatched rows: list-level nulls per object, nulls per event; the rest is right."""
    base = random_jets(500, seed=11)
    counts = base.column("nJet").to_numpy()
    valid = np.random.default_rng(5).random(500) > 0.3
    flat_sf = np.random.default_rng(6).uniform(0.9, 1.1, int(counts[valid].sum())).astype(np.float32)
    table = base.append_column("Jet_sf", jagged(counts, flat_sf, valid))
    met = table.column("MET_pt").to_numpy(zero_copy_only=False)
    table = table.set_column(table.column_names.index("MET_pt"), "MET_pt", pa.array(met, mask=~valid))
    spec = parse_spec(
        {
            "inference": [
                dict(JET_ENTRY, inputs={"INPUT__0": ["Jet_pt", "Jet_sf", "Jet_phi"]}),
                EVENT_ENTRY,
            ]
        }
    )
    (producer,) = build_producers(spec, triton_server.grpc_url, registry=CollectorRegistry())
    try:
        out = producer(table)
    finally:
        producer.close()  # type: ignore[attr-defined]
    scores = out.column("Jet_score").combine_chunks()
    assert scores.is_valid().to_numpy(zero_copy_only=False).tolist() == valid.tolist()
    kept = table.filter(pa.array(valid))
    features = np.stack(
        [kept.column(c).combine_chunks().flatten().to_numpy() for c in ("Jet_pt", "Jet_sf", "Jet_phi")],
        axis=1,
    )
    np.testing.assert_allclose(scores.flatten().to_numpy(), jet_mlp_reference(features), rtol=1e-5, atol=1e-6)
    assert pa.compute.list_value_length(scores).to_numpy(zero_copy_only=False)[valid].tolist() == counts[valid].tolist()
    assert out.column("met_affine_0").null_count == int((~valid).sum())


def test_empty_file_and_empty_collections(triton_server: TritonServer) -> None:
    registry = CollectorRegistry()
    with TritonColumnProducer(sample("jet"), triton_server.grpc_url, registry=registry) as producer:
        empty = random_jets(0)
        out = producer(empty)
        assert out.num_rows == 0
        assert out.schema.field("Jet_score").type == pa.list_(pa.field("item", pa.float32(), nullable=False))
        no_jets = random_jets(20, mean_jets=0.0)
        assert producer(no_jets).column("Jet_score").to_pylist() == [[] for _ in range(20)]
    assert rows(registry, "batches_total") == 0


def test_dynamic_batching(triton_server: TritonServer) -> None:
    """Many small requests in flight are merged by the server's dynamic batcher into fewer executions."""
    import tritonclient.grpc as grpcclient

    def stats() -> tuple[int, int]:
        with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
            model = client.get_inference_statistics("jet_mlp", as_json=True)["model_stats"][0]
        return int(model["inference_stats"]["success"].get("count", 0)), int(model.get("execution_count", 0))

    table = random_jets(4000, seed=2)
    requests_before, executions_before = stats()
    with TritonColumnProducer(
        sample("jet", batch_size=16), triton_server.grpc_url, in_flight=32, registry=CollectorRegistry()
    ) as producer:
        out = producer(table)
    requests_after, executions_after = stats()
    n_requests = -(-len(jet_features(table)) // 16)
    assert requests_after - requests_before == n_requests
    executions = executions_after - executions_before
    print(f"dynamic batching: {n_requests} requests in {executions} executions")
    assert executions < n_requests * 0.8
    np.testing.assert_allclose(
        out.column("Jet_score").combine_chunks().flatten().to_numpy(),
        jet_mlp_reference(jet_features(table)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_wrong_tensor_name_is_refused(triton_server: TritonServer) -> None:
    bad = dict(JET_ENTRY, inputs={"INPUT__1": ["Jet_pt", "Jet_eta", "Jet_phi"]})
    spec = parse_spec({"inference": [bad]})
    with pytest.raises(
        ModelMismatchError, match=r"INPUT__1.*not in the model \(its inputs: \['INPUT__0'\]\)"
    ) as caught:
        build_producers(spec, triton_server.grpc_url, registry=CollectorRegistry())
    assert "'jet_mlp'" in str(caught.value)
    assert triton_server.grpc_url in str(caught.value)
    with pytest.raises(ModelMismatchError, match="INPUT__1"):
        check_spec_against_server(spec, triton_server.http_url)
    assert check_spec_against_server(parse_spec({"inference": [JET_ENTRY]}), triton_server.grpc_url)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model": "no_such_model"}, r"model 'no_such_model' is not served .*event_affine.*jet_mlp"),
        ({"version": "7"}, "version 7 is not served"),
        ({"inputs": {"INPUT__0": ["Jet_pt", "Jet_eta"]}}, r"dims \[3\] per row but the spec stacks 2"),
    ],
)
def test_other_mismatches_fail_fast(triton_server: TritonServer, changes: dict[str, Any], match: str) -> None:
    spec = JoinSpec(inference=[sample("jet", **changes)])
    began = time.monotonic()
    with pytest.raises(ModelMismatchError, match=match):
        build_producers(spec, triton_server.grpc_url, startup_deadline_s=30, registry=CollectorRegistry())
    assert time.monotonic() - began < 5  # refused at once, not after waiting for the deadline


def test_unreachable_server_fails_files_not_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waited for once up to the startup deadline; then every file fails clearly after a short probe."""
    from transformer.inference import producer as producer_module

    monkeypatch.setattr(producer_module, "REPROBE_S", 0.5)
    url = f"127.0.0.1:{free_port()}"
    spec = parse_spec({"inference": [JET_ENTRY]})
    began = time.monotonic()
    (producer,) = build_producers(spec, url, startup_deadline_s=1.0, deadline_s=30.0, registry=CollectorRegistry())
    try:
        assert 1.0 <= time.monotonic() - began < 5
        for _ in range(2):  # file after file: a clear error, after the short probe, not the 30 s deadline
            began = time.monotonic()
            with pytest.raises(
                ServerUnavailableError,
                match=rf"Triton server grpc://{url} did not have model 'jet_mlp' ready within 0.5s .*unreachable",
            ):
                producer(random_jets(10))
            assert time.monotonic() - began < 3
    finally:
        producer.close()  # type: ignore[attr-defined]
    assert check_spec_against_server(spec, url, timeout_s=0.5) is False


def test_server_killed_mid_run(triton_factory: Callable[..., TritonServer]) -> None:
    """A crash while batches are in flight fails that chunk clearly after the deadline; the producer
    survives and works again once the server is back on the same address."""
    server = triton_factory()
    table = random_jets(60_000, seed=4)  # ~300k jets in 64-row batches: several seconds of requests
    registry = CollectorRegistry()
    producer = TritonColumnProducer(
        sample("jet", batch_size=64),
        server.grpc_url,
        deadline_s=2.0,
        retries=50,
        in_flight=4,
        registry=registry,
    )
    try:
        producer(random_jets(50))
        before = rows(registry, "rows_total")
        killer = threading.Timer(0.5, server.kill)
        killer.start()
        began = time.monotonic()
        with pytest.raises(ServerUnavailableError) as caught:
            producer(table)
        killer.join()
        elapsed = time.monotonic() - began
        message = str(caught.value)
        assert f"Triton server grpc://{server.grpc_url} did not answer model 'jet_mlp'" in message
        assert "StatusCode.UNAVAILABLE" in message
        assert 2.0 < elapsed < 10.0
        assert rows(registry, "retries_total") > 0
        assert rows(registry, "failures_total") == 1
        done = rows(registry, "rows_total") - before
        assert 0 < done < len(jet_features(table)), "the server was killed before or after the run"

        # a retry that outlives the outage succeeds: restart while the next chunk is retrying
        server.restart()
        server.wait_ready()
        small = random_jets(200, seed=8)
        out = producer(small)
        np.testing.assert_allclose(
            out.column("Jet_score").combine_chunks().flatten().to_numpy(),
            jet_mlp_reference(jet_features(small)),
            rtol=1e-5,
            atol=1e-6,
        )
    finally:
        producer.close()


def test_retries_outlive_a_restart(triton_factory: Callable[..., TritonServer]) -> None:
    server = triton_factory()
    registry = CollectorRegistry()
    table = random_jets(300, seed=9)
    with TritonColumnProducer(sample("jet"), server.grpc_url, deadline_s=60.0, registry=registry) as producer:
        producer(random_jets(5))
        server.stop()
        restarter = threading.Timer(0.5, server.restart)
        restarter.start()
        out = producer(table)  # retried with backoff until the new server answers
        restarter.join()
    np.testing.assert_allclose(
        out.column("Jet_score").combine_chunks().flatten().to_numpy(),
        jet_mlp_reference(jet_features(table)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert rows(registry, "retries_total") > 0


def test_model_error_is_not_retried(triton_server: TritonServer) -> None:
    """A permanent server answer (here: a wrong input datatype sent by a raw request) is an InferenceError."""
    from transformer.inference.client import TritonClient, TritonEndpoint

    with TritonClient(TritonEndpoint.parse(triton_server.grpc_url)) as client:
        with pytest.raises(InferenceError, match="INVALID_ARGUMENT") as caught:
            client.infer(
                "jet_mlp",
                None,
                {"INPUT__0": ("FP64", np.zeros((4, 3)))},
                ["OUTPUT__0"],
                batch_size=4,
                in_flight=1,
            )
        assert not isinstance(caught.value, ServerUnavailableError)
