"""Celery message protocol 2, decoding only: an AMQP message from the App into a `TransformTask`.

The ServiceX App publishes `send_task("transformer_sidecar.transform_file", kwargs=...)` with Celery's
defaults: protocol 2, JSON. The task name and id travel in the AMQP headers (`task`, `id`), the body is the
JSON array `[args, kwargs, embed]` with `embed` = `{"callbacks", "errbacks", "chain", "chord"}`. This
module owns that framing; it does no I/O and knows nothing of pika beyond plain values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from transformer.errors import InvalidMessageError
from transformer.models import TRANSFORM_TASK_NAME, TransformTask

JSON_CONTENT_TYPE = "application/json"
_EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})


@dataclass(frozen=True)
class DecodedTask:
    """A decoded task message: the kwargs, and Celery's task id for the logs."""

    task: TransformTask
    task_id: str | None
    retries: int


def decode_task(
    body: bytes,
    headers: Mapping[str, Any] | None,
    *,
    content_type: str | None,
    content_encoding: str | None,
) -> DecodedTask:
    """Decode one Celery protocol-2 `transformer_sidecar.transform_file` message.

    Args:
        body: the AMQP message body.
        headers: the AMQP application headers (protocol 2 puts `task`, `id`, `retries` there).
        content_type: the AMQP content type; only `application/json` (Celery's default) is accepted.
        content_encoding: the AMQP content encoding; `utf-8` or none.

    Returns:
        The validated task kwargs with the Celery task id.

    Raises:
        InvalidMessageError: anything else, with what is wrong.
    """
    headers = dict(headers or {})
    if "task" not in headers:
        raise InvalidMessageError("not a Celery protocol-2 task message: no 'task' header")
    name = _text(headers["task"])
    if name != TRANSFORM_TASK_NAME:
        raise InvalidMessageError(
            f"unexpected task {name!r}; this queue takes only {TRANSFORM_TASK_NAME!r}"
        )
    if headers.get("compression"):
        raise InvalidMessageError(f"compressed task messages are not supported ({headers['compression']!r})")
    if content_type != JSON_CONTENT_TYPE:
        raise InvalidMessageError(
            f"unsupported content type {content_type!r}; expected {JSON_CONTENT_TYPE!r}"
        )
    encoding = (content_encoding or "utf-8").lower()
    if encoding not in {"utf-8", "utf8"}:
        raise InvalidMessageError(f"unsupported content encoding {content_encoding!r}")
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidMessageError(f"task body is not JSON: {error}") from None
    if not (isinstance(payload, list) and len(payload) == 3):
        raise InvalidMessageError("task body is not the protocol-2 triple [args, kwargs, embed]")
    args, kwargs, embed = payload
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise InvalidMessageError("task body must hold a list of args and a mapping of kwargs")
    if args:
        raise InvalidMessageError(f"the task takes keyword arguments only, got {len(args)} positional")
    if embed is not None and not (isinstance(embed, dict) and set(embed) <= _EMBED_KEYS):
        raise InvalidMessageError("task body's third element is not a protocol-2 embed mapping")
    try:
        task = TransformTask.model_validate(kwargs)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'kwargs'}: {e['msg']}" for e in error.errors()
        )
        raise InvalidMessageError(f"invalid task kwargs: {problems}") from None
    task_id = headers.get("id")
    retries = headers.get("retries") or 0
    return DecodedTask(
        task=task,
        task_id=_text(task_id) if task_id is not None else None,
        retries=int(retries) if isinstance(retries, int) else 0,
    )


def _text(value: Any) -> str:
    # pika hands header strings back as str, but bytes appear with some clients.
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
