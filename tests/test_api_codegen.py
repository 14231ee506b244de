"""The code generator over HTTP (FastAPI TestClient): the answer as the App reads it, errors, probes."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from python_multipart import MultipartParser

from joiner.spec import parse_spec
from tests.fixtures.seaweedfs import S3Server
from tests.standin_app.multipart import decode_parts
from transformer.api.app import GENERATED_CODE_PATH, create_app
from transformer.api.friend_files import RemoteFileResolver
from transformer.codegen import CodegenLimits, check_spec
from transformer.locations import AllowedLocations
from transformer.settings import InferenceSettings, ServiceSettings, Settings, WorkerSettings

IMAGE = "registry.example/servicex-joiner:0.1.0"


def settings(**worker: Any) -> Settings:
    service = ServiceSettings(science_image=IMAGE, max_body_bytes=worker.pop("max_body_bytes", 64 * 1024))
    triton = InferenceSettings(triton_url=worker.pop("triton_url", None))
    return Settings(worker=WorkerSettings(**worker), service=service, inference=triton)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(settings()), raise_server_exceptions=False) as test_client:
        yield test_client


def selection(files: list[str], **friend: Any) -> str:
    spec = {
        "key": "cms",
        "primary": {"columns": ["Jet_pt", "nJet"]},
        "friends": [{"name": "sys", "files": files, "columns": ["Jet_sf"], "prefix": "sys_", **friend}],
    }
    return parse_spec(spec).canonical_json()


def python_multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """A second, independent parser (the one FastAPI uses for forms)."""
    boundary = content_type.split("boundary=")[1]
    parts: list[bytes] = []
    current: list[bytes] = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current.append(data[start:end])

    def on_part_end() -> None:
        parts.append(b"".join(current))
        current.clear()

    parser = MultipartParser(boundary, {"on_part_data": on_part_data, "on_part_end": on_part_end})
    parser.write(body)
    parser.finalize()
    return parts


def test_the_answer_has_the_four_parts_in_the_order_the_app_reads(client: TestClient) -> None:
    response = client.post(GENERATED_CODE_PATH, json={"code": selection(["root://eos//sys.root"])})
    assert response.status_code == 200, response.text
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    parts = decode_parts(response.content, content_type)
    assert [name for name, _ in parts] == ["transformer_image", "language", "command", "zip_data"]
    image, language, command, zip_data = (content for _, content in parts)
    assert (image.decode().strip(), language.decode().strip(), command.decode().strip()) == (
        IMAGE,
        "python",
        "/generated/transform_single_file.py",
    )
    with zipfile.ZipFile(io.BytesIO(zip_data)) as archive:
        assert sorted(archive.namelist()) == [
            "join_spec.json",
            "joiner_settings.json",  # the facility's settings for the pods (allowed locations here)
            "transform_single_file.py",
            "transformer_capabilities.json",
        ]
        shipped = json.loads(archive.read("join_spec.json"))
    assert shipped["friends"][0]["prefix"] == "sys_"
    assert python_multipart_parts(response.content, content_type) == [image, language, command, zip_data]


@pytest.mark.parametrize(
    ("code", "field"),
    [
        ("{}", None),
        ('{"friends": [{"name": "x y", "files": ["root://a//b"], "columns": ["c"]}]}', "friends.0.name"),
        ('{"key": "lhcb"}', "key"),
        (
            '{"inference": [{"model": "m", "inputs": {}, "outputs": {"o": "y"}}]}',
            "inference.0.inputs",
        ),
    ],
)
def test_a_bad_spec_is_http_500_with_a_message_naming_the_field(
    client: TestClient, code: str, field: str | None
) -> None:
    response = client.post(GENERATED_CODE_PATH, json={"code": code})
    if field is None:  # an empty spec is valid: all defaults, no friends
        assert response.status_code == 200
        return
    assert response.status_code == 500
    message = response.json()["Message"]
    assert message.startswith("invalid join spec: ")
    assert field in message


def test_locations_and_limits_are_refused_with_what_to_change() -> None:
    app = create_app(settings(max_friend_files=2, allowed_locations=("root://eos/",)))
    with TestClient(app) as client:
        local = client.post(GENERATED_CODE_PATH, json={"code": selection(["/var/run/secrets/token"])})
        assert local.status_code == 500
        assert "friends.0.files.0" in local.json()["Message"]
        assert "JOINER_ALLOWED_LOCATIONS permits only paths starting with 'root://eos/'" in local.json()["Message"]
        many = client.post(GENERATED_CODE_PATH, json={"code": selection([f"root://eos//{i}.root" for i in range(3)])})
        assert many.status_code == 500
        assert "at most 2 friend files per spec (JOINER_MAX_FRIEND_FILES)" in many.json()["Message"]
        metrics = client.get("/metrics").text
    assert 'servicex_joiner_codegen_requests_total{outcome="refused"} 2.0' in metrics


def test_bodies_over_the_limit_and_malformed_bodies_are_refused() -> None:
    with TestClient(create_app(settings(max_body_bytes=300))) as client:
        big = client.post(GENERATED_CODE_PATH, json={"code": selection([f"root://eos//{i}.root" for i in range(20)])})
        assert big.status_code == 413
        assert "larger than 300 bytes (JOINER_MAX_BODY_BYTES)" in big.json()["Message"]
        streamed = client.post(
            GENERATED_CODE_PATH,
            content=iter([b'{"code": "', b"x" * 400, b'"}']),
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413
        assert client.post(GENERATED_CODE_PATH, content=b"not json").status_code == 400
        wrong = client.post(GENERATED_CODE_PATH, json={"selection": "{}"})
        assert wrong.status_code == 400
        assert '{"code"' in wrong.json()["Message"]
        metrics = client.get("/metrics").text
    assert 'servicex_joiner_codegen_requests_total{outcome="too_large"} 2.0' in metrics
    assert 'servicex_joiner_codegen_requests_total{outcome="malformed"} 2.0' in metrics


def test_probes_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "image": IMAGE}
    client.post(GENERATED_CODE_PATH, json={"code": selection(["root://eos//sys.root"])})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'servicex_joiner_codegen_requests_total{outcome="generated"} 1.0' in metrics.text
    assert "servicex_joiner_codegen_seconds_count 1.0" in metrics.text
    with TestClient(create_app(settings(allowed_locations=()))) as unready:
        assert unready.get("/readyz").status_code == 503


class _FileServer(BaseHTTPRequestHandler):
    """Serves HEAD for files of a directory (a stand-in for an https:// friend host)."""

    root: Path

    def do_HEAD(self) -> None:
        if self.path.startswith("/slow/"):
            time.sleep(3)
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "a.root").write_bytes(b"a" * 1000)
    (tmp_path / "b.root").write_bytes(b"b" * 2000)
    handler = type("Handler", (_FileServer,), {"root": tmp_path})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_http_friends_are_sized_by_head_requests(http_files: str) -> None:
    app = create_app(settings(allowed_locations=(http_files + "/",), max_friend_bytes=2999))
    with TestClient(app) as client:
        too_big = client.post(
            GENERATED_CODE_PATH, json={"code": selection([f"{http_files}/a.root", f"{http_files}/b.root"])}
        )
        assert too_big.status_code == 500
        assert "hold 3000 bytes" in too_big.json()["Message"]
        missing = client.post(GENERATED_CODE_PATH, json={"code": selection([f"{http_files}/c.root"])})
        assert missing.status_code == 500
        assert "friends.0.files.0" in missing.json()["Message"]
        assert "does not exist" in missing.json()["Message"]
        assert client.post(GENERATED_CODE_PATH, json={"code": selection([f"{http_files}/b.root"])}).status_code == 200


def test_a_slow_friend_server_does_not_hold_up_the_submission(http_files: str) -> None:
    spec = parse_spec(json.loads(selection([f"{http_files}/a.root", f"{http_files}/slow/b.root"])))
    allowed = AllowedLocations((http_files + "/",))
    limits = CodegenLimits(max_friend_files=10, max_friend_bytes=10**9)
    started = time.monotonic()
    checked = check_spec(spec, allowed=allowed, limits=limits, resolver=RemoteFileResolver(None), deadline_s=0.5)
    assert time.monotonic() - started < 2.5
    assert (checked.friend_files, checked.friend_bytes, checked.unsized_files) == (2, 1000, 1)


@pytest.mark.integration
def test_s3_friends_are_listed_and_sized_in_the_object_store(s3_server: S3Server) -> None:
    from minio import Minio

    store = Minio(s3_server.url, s3_server.access_key, s3_server.secret_key, secure=False, region="us-east-1")
    if not store.bucket_exists("codegen-friends"):
        store.make_bucket("codegen-friends")
    for name, size in (("sys/f1.root", 100), ("sys/f2.root", 250), ("other/g.root", 5)):
        store.put_object("codegen-friends", name, io.BytesIO(b"x" * size), size)
    config = Settings(
        object_store=s3_server.settings(),
        worker=WorkerSettings(max_friend_bytes=349),
        service=ServiceSettings(science_image=IMAGE),
    )
    with TestClient(create_app(config)) as client:
        globbed = client.post(GENERATED_CODE_PATH, json={"code": selection(["s3://codegen-friends/sys/*.root"])})
        assert globbed.status_code == 500
        assert "hold 350 bytes" in globbed.json()["Message"]
        one = client.post(GENERATED_CODE_PATH, json={"code": selection(["s3://codegen-friends/sys/f2.root"])})
        assert one.status_code == 200
        missing = client.post(GENERATED_CODE_PATH, json={"code": selection(["s3://codegen-friends/sys/f3.root"])})
        assert missing.status_code == 500
        assert "does not exist" in missing.json()["Message"]
        none = client.post(GENERATED_CODE_PATH, json={"code": selection(["s3://codegen-friends/nope/*.root"])})
        assert "matches no file" in none.json()["Message"]


@pytest.mark.integration
def test_inference_that_does_not_fit_the_served_model_is_refused(triton_server: Any) -> None:
    spec = {
        "primary": {"columns": ["Jet_pt", "Jet_eta", "Jet_phi"]},
        "inference": [
            {
                "model": "jet_mlp",
                "level": "Jet",
                "inputs": {"INPUT__0": ["Jet_pt", "Jet_eta"]},
                "outputs": {"OUTPUT__0": "Jet_score"},
            }
        ],
    }
    good = {
        **spec,
        "inference": [{**spec["inference"][0], "inputs": {"INPUT__0": ["Jet_pt", "Jet_eta", "Jet_phi"]}}],
    }
    with TestClient(create_app(settings(triton_url=triton_server.grpc_url))) as client:
        refused = client.post(GENERATED_CODE_PATH, json={"code": json.dumps(spec)})
        assert refused.status_code == 500
        message = refused.json()["Message"]
        assert message.startswith("invalid join spec: inference: ")
        assert "jet_mlp" in message
        assert client.post(GENERATED_CODE_PATH, json={"code": json.dumps(good)}).status_code == 200
    with TestClient(create_app(settings(triton_url="127.0.0.1:9"))) as unreachable:
        # A server that cannot be reached does not block submission; the worker waits for it.
        assert unreachable.post(GENERATED_CODE_PATH, json={"code": json.dumps(spec)}).status_code == 200
