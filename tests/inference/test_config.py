"""TRITON_URL parsing, build_producers without a server address, metrics registry (no server)."""

from __future__ import annotations

import pickle

import pytest
from prometheus_client import CollectorRegistry

from joiner.spec import parse_spec
from transformer.inference import InferenceConfigError, TritonColumnProducer, build_producers
from transformer.inference.client import Protocol, TritonEndpoint
from transformer.inference.metrics import InferenceMetrics

SPEC = {
    "primary": {"columns": ["Jet_pt", "Jet_eta", "Jet_phi"]},
    "inference": [
        {
            "model": "jet_mlp",
            "level": "Jet",
            "inputs": {"INPUT__0": ["Jet_pt", "Jet_eta", "Jet_phi"]},
            "outputs": {"OUTPUT__0": "Jet_score"},
        }
    ],
}


@pytest.mark.parametrize(
    ("url", "protocol", "host_port", "ssl"),
    [
        ("triton:8001", Protocol.GRPC, "triton:8001", False),
        ("grpc://10.0.0.2:8001", Protocol.GRPC, "10.0.0.2:8001", False),
        ("http://127.0.0.1:8000", Protocol.HTTP, "127.0.0.1:8000", False),
        ("https://triton.example.org:443/", Protocol.HTTP, "triton.example.org:443", True),
        ("[::1]:8001", Protocol.GRPC, "[::1]:8001", False),
    ],
)
def test_endpoint_parse(url: str, protocol: Protocol, host_port: str, ssl: bool) -> None:
    endpoint = TritonEndpoint.parse(url)
    assert (endpoint.protocol, endpoint.host_port, endpoint.ssl) == (protocol, host_port, ssl)


@pytest.mark.parametrize("url", ["", "triton", "ftp://triton:21", "http://triton:8000/v2", "triton:port"])
def test_endpoint_parse_refuses(url: str) -> None:
    with pytest.raises(InferenceConfigError, match="TRITON_URL"):
        TritonEndpoint.parse(url)


def test_no_url_with_inference_entries() -> None:
    spec = parse_spec(SPEC)
    with pytest.raises(InferenceConfigError, match="model\\(s\\) 'jet_mlp' but no Triton server is configured"):
        build_producers(spec, None)
    assert build_producers(parse_spec({"primary": {"columns": ["MET_pt"]}}), None) == []


def test_producer_pickles_without_connecting() -> None:
    spec = parse_spec(SPEC)
    producer = TritonColumnProducer(spec.inference, "127.0.0.1:1", registry=CollectorRegistry())
    copy = pickle.loads(pickle.dumps(producer))
    assert copy.describe()["server"] == "grpc://127.0.0.1:1"
    assert copy.describe()["models"][0]["columns"] == ["Jet_score"]


def test_metrics_once_per_registry() -> None:
    registry = CollectorRegistry()
    metrics = InferenceMetrics.for_registry(registry)
    assert InferenceMetrics.for_registry(registry) is metrics
    metrics.labels("jet_mlp").rows.inc(5)
    assert registry.get_sample_value("servicex_joiner_inference_rows_total", {"model": "jet_mlp"}) == 5
