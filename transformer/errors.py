"""Errors of the service side (worker, storage, App callbacks, messages), split by what to do about them.

`TransientError` and its subclasses are worth retrying (an object store, the App or the network is down);
`PermanentFileError` and its subclasses fail one input file for good and are reported as `failure`.
`InvalidMessageError` is a queue message that is not a task at all. The worker decides its policy from the
type alone, never from a message string. The engine's own errors (`joiner.errors.JoinError`) are permanent
for their input and are not wrapped. This module holds no logic.
"""

from __future__ import annotations


class TransformerError(Exception):
    """Base of every service-side error."""


class TransientError(TransformerError):
    """Worth retrying with backoff: a server or the network is down or overloaded."""


class StorageError(TransientError, OSError):
    """An object-store or local-storage operation failed (bucket and object named in the message)."""

    def __init__(self, message: str, *, bucket: str | None = None, name: str | None = None) -> None:
        self.bucket = bucket
        self.name = name
        where = f" [s3://{bucket}/{name or ''}]" if bucket else ""
        super().__init__(message + where)


class AppCallbackError(TransientError, ConnectionError):
    """The ServiceX App did not accept a callback (network error or HTTP 5xx)."""


class PermanentFileError(TransformerError):
    """One input file cannot be transformed, whatever is retried: reported as `failure`, then acked."""


class AppRejectedError(PermanentFileError, ValueError):
    """The App answered a callback with HTTP 4xx: retrying the same body cannot help."""


class LocationNotAllowedError(PermanentFileError, PermissionError):
    """A spec names a friend file outside `JOINER_ALLOWED_LOCATIONS`."""

    def __init__(self, path: str, allowed: tuple[str, ...]) -> None:
        self.path = path
        self.allowed = allowed
        super().__init__(
            f"friend file {path!r} is not in an allowed location; JOINER_ALLOWED_LOCATIONS permits only "
            f"paths starting with {', '.join(repr(a) for a in allowed) or '(nothing)'}"
        )


class UnsupportedFormatError(PermanentFileError, ValueError):
    """The task asks for a `result_format` this transformer cannot write."""

    def __init__(self, result_format: str, supported: tuple[str, ...]) -> None:
        self.result_format = result_format
        super().__init__(
            f"unsupported result_format {result_format!r}; this transformer writes {', '.join(supported)}"
        )


class FileDeadlineError(PermanentFileError, TimeoutError):
    """The transform of one file ran past the per-file deadline and was stopped."""


class TransformCrashError(TransientError, ChildProcessError):
    """The process transforming one file died without a result (killed, out of memory, segfault)."""


class InvalidMessageError(TransformerError, ValueError):
    """A queue message that is not a valid `transformer_sidecar.transform_file` task."""
