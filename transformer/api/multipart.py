"""Encoding the code generator's answer as `multipart/form-data`, parts in the order given.

The ServiceX App decodes the answer by position (image, language, command, zip), so the order is part of
the contract; a dict-based form encoder that might reorder or add parts is not used.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence


def encode_form(parts: Sequence[tuple[str, str | bytes]]) -> tuple[bytes, str]:
    """Encode named parts as one `multipart/form-data` body.

    Args:
        parts: (name, value) pairs in order; `str` values are sent as UTF-8 text parts, `bytes` values as
            `application/octet-stream`.

    Returns:
        The body and its `Content-Type` header value (with the boundary).
    """
    while True:
        boundary = secrets.token_hex(16)
        marker = b"--" + boundary.encode()
        values = [v.encode() if isinstance(v, str) else v for _, v in parts]
        if not any(marker in v for v in values):
            break
    chunks: list[bytes] = []
    for (name, value), data in zip(parts, values, strict=True):
        kind = "text/plain; charset=utf-8" if isinstance(value, str) else "application/octet-stream"
        chunks += [
            marker,
            b"\r\n",
            f'Content-Disposition: form-data; name="{name}"\r\nContent-Type: {kind}\r\n\r\n'.encode(),
            data,
            b"\r\n",
        ]
    chunks += [marker, b"--\r\n"]
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"
