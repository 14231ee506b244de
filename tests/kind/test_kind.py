"""The kind integration test (run_kind.py) and offline checks of what it sends to the cluster.

The end-to-end run needs Docker, kind and the `kubernetes` client; it skips where `docker info` fails
(no engine, as on the project's CI machine) and takes several minutes where it runs (docs/deployment.md,
"The kind test"). The offline tests need none of that: the objects the run creates validate strictly
against the Kubernetes 1.30 schemas, and the tasks it publishes decode with the worker's own decoder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kind import app_standin
from tests.kind import manifests as m
from transformer.messaging.codec import decode_task

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
IMAGE = "servicex-joiner:kind"


def _all_objects() -> list[dict[str, Any]]:
    request_id = "3f1c8a52-0000-4000-8000-000000000001"
    return [
        m.secret(m.MINIO_SECRET, {"root-user": "u", "root-password": "p"}),
        *m.minio(),
        *m.rabbitmq(),
        m.standin_configmap("print('hello')\n"),
        *m.app_standin(IMAGE),
        m.standin_job("kind-prepare", IMAGE, ["prepare"], minio_env=True),
        m.generated_code_configmap(request_id, {"join_spec.json": "{}"}),
        m.transformer_deployment(
            request_id,
            science_image=IMAGE,
            sidecar_image=IMAGE,
            rabbit_uri="amqp://u:p@kind-rabbitmq:5672/%2F",
            language="python",
            command="/generated/transform_single_file.py",
        ),
        m.transformer_hpa(request_id),
    ]


def test_kind_objects_validate_strictly() -> None:
    validator = shutil.which("kubernetes-validate")
    if validator is None:
        pytest.skip("kubernetes-validate is not installed")
    text = yaml.safe_dump_all(_all_objects())
    done = subprocess.run(
        [validator, "--strict", "--quiet", "-k", "1.30.0", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_published_tasks_decode_like_the_app_s() -> None:
    kwargs = {
        "request_id": "r-1",
        "file_id": 7,
        "paths": ["http://kind-minio:9000/kind-inputs/nano_0.root"],
        "service_endpoint": "http://kind-app:8000/servicex/internal/transformation/r-1",
        "result_destination": "object-store",
        "result_format": "parquet",
    }
    body, headers, properties = app_standin.celery_message(kwargs, task_id="tid")
    decoded = decode_task(
        body,
        headers,
        content_type=properties["content_type"],
        content_encoding=properties["content_encoding"],
    )
    assert decoded.task_id == "tid"
    assert decoded.task.file_id == 7
    assert decoded.task.paths == kwargs["paths"]
    assert json.loads(body)[2] == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_transformer_pod_is_shaped_like_the_app_s() -> None:
    deployment = m.transformer_deployment(
        "rid",
        science_image=IMAGE,
        sidecar_image=IMAGE,
        rabbit_uri="amqp://u:p@h:5672/%2F",
        language="python",
        command="/generated/transform_single_file.py",
    )
    spec = deployment["spec"]["template"]["spec"]
    sidecar, science = spec["containers"]
    assert (sidecar["name"], science["name"]) == ("sidecar", "transformer")
    assert sidecar["args"][0].split()[1:3] == ["python", "/servicex/transformer_sidecar/transformer.py"]
    assert "--shared-dir /servicex/output" in sidecar["args"][0]
    assert science["command"] == ["bash", "--login", "-c"]
    assert (
        "bash /servicex/output/scripts/watch.sh python /generated/transform_single_file.py"
        in science["args"][0]
    )
    assert {v["name"] for v in spec["volumes"]} == {"sidecar-volume", "generated-code"}


def test_codegen_answer_is_parsed_like_the_app_does() -> None:
    import io
    import zipfile

    from transformer.api.multipart import encode_form

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("join_spec.json", '{"key": "cms"}')
        archive.writestr("transformer_capabilities.json", "{}")
    body, content_type = encode_form(
        [
            ("transformer_image", IMAGE),
            ("language", "python"),
            ("command", "/generated/transform_single_file.py"),
            ("zip_data", buffer.getvalue()),
        ]
    )
    answer = app_standin.parse_codegen_answer(content_type, body)
    assert answer["order"] == ["transformer_image", "language", "command", "zip_data"]
    assert answer["transformer_image"] == IMAGE
    assert answer["files"]["join_spec.json"] == '{"key": "cms"}'


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if done.returncode != 0:
        return f"no Docker engine (docker info: {done.stderr.strip().splitlines()[-1:] or done.returncode})"
    if shutil.which("kind") is None:
        return "kind is not installed (https://kind.sigs.k8s.io)"
    return None


@pytest.mark.integration
@pytest.mark.slow
def test_kind_end_to_end() -> None:
    reason = _docker_unavailable()
    if reason is not None:
        pytest.skip(f"kind test needs Docker: {reason}")
    pytest.importorskip("kubernetes", reason="pip install kubernetes")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(HERE / "run_kind.py")], cwd=REPO, env=env, timeout=3600, check=False
    )
    assert done.returncode == 0, "kind test failed; see its output above"
