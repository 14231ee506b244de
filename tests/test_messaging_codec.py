"""The Celery protocol-2 codec against messages built by Celery itself (no broker needed here)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kombu.serialization import dumps

from transformer.errors import InvalidMessageError
from transformer.messaging.codec import decode_task
from transformer.models import ResultDestination

KWARGS = {
    "request_id": "2f748056-9db3-47f0-b51e-3ec46b8a284a",
    "file_id": 42,
    "paths": ["root://a//f.root", "https://b/f.root"],
    "service_endpoint": "http://sx-servicex-app:8000/servicex/internal/transformation/2f748056",
    "result_destination": "object-store",
    "result_format": "parquet",
}


def celery_message(name: str = "transformer_sidecar.transform_file", kwargs: Any = None) -> tuple[bytes, dict[str, Any], str, str]:  # noqa: E501
    """(body, headers, content_type, content_encoding) as Celery would publish them."""
    from celery import Celery

    app = Celery("ServiceX-App", broker="memory://")
    message = app.amqp.as_task_v2("task-id-1", name, args=(), kwargs=kwargs if kwargs is not None else KWARGS)
    content_type, encoding, body = dumps(message.body, serializer="json")
    app.close()
    raw = body if isinstance(body, bytes) else body.encode(encoding)
    return raw, dict(message.headers), content_type, encoding


def test_decodes_celery_protocol_2() -> None:
    body, headers, content_type, encoding = celery_message()
    assert headers["task"] == "transformer_sidecar.transform_file"
    decoded = decode_task(body, headers, content_type=content_type, content_encoding=encoding)
    assert decoded.task_id == "task-id-1"
    task = decoded.task
    assert task.request_id == KWARGS["request_id"] and task.file_id == 42
    assert task.paths == KWARGS["paths"]
    assert task.result_destination is ResultDestination.OBJECT_STORE
    assert task.result_format == "parquet"
    assert json.loads(body)[2] == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_unknown_result_format_is_kept_for_a_failure_report() -> None:
    body, headers, ct, enc = celery_message(kwargs={**KWARGS, "result_format": "hdf5"})
    assert decode_task(body, headers, content_type=ct, content_encoding=enc).task.result_format == "hdf5"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b, h: (b, {k: v for k, v in h.items() if k != "task"}), "no 'task' header"),
        (lambda b, h: (b, {**h, "task": "other.task"}), "unexpected task"),
        (lambda b, h: (b"{not json", h), "not JSON"),
        (lambda b, h: (json.dumps({"task": "x"}).encode(), h), "triple"),
        (lambda b, h: (json.dumps([[1], {}, None]).encode(), h), "keyword arguments only"),
        (lambda b, h: (json.dumps([[], {**KWARGS, "file_id": "abc"}, None]).encode(), h), "file_id"),
        (lambda b, h: (json.dumps([[], {k: v for k, v in KWARGS.items() if k != "paths"}, None]).encode(), h),
         "paths"),
        (lambda b, h: (json.dumps([[], {**KWARGS, "paths": []}, None]).encode(), h), "paths"),
    ],
)
def test_invalid_messages(mutate: Any, match: str) -> None:
    body, headers, ct, enc = celery_message()
    body, headers = mutate(body, headers)
    with pytest.raises(InvalidMessageError, match=match):
        decode_task(body, headers, content_type=ct, content_encoding=enc)


def test_other_serializers_are_refused() -> None:
    body, headers, _, _ = celery_message()
    with pytest.raises(InvalidMessageError, match="content type"):
        decode_task(body, headers, content_type="application/x-python-serialize", content_encoding="binary")
