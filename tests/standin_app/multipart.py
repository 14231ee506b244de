"""Decoding a code generator's `multipart/form-data` answer by part position, as the App does.

The App (requests_toolbelt's MultipartDecoder) reads parts 0..3 as image, language, command and zip data
whatever their names; this uses the standard library's MIME parser to the same effect.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser


def decode_parts(body: bytes, content_type: str) -> list[tuple[str | None, bytes]]:
    """The (name, content) of every part of a `multipart/form-data` body, in order.

    Raises:
        ValueError: the body is not multipart.
    """
    if not content_type.startswith("multipart/"):
        raise ValueError(f"not a multipart answer: Content-Type {content_type!r}")
    message = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise ValueError("the multipart body has no parts")
    parts: list[tuple[str | None, bytes]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        parts.append((str(name) if name is not None else None, payload if isinstance(payload, bytes) else b""))
    return parts
