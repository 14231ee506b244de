"""Errors of Triton inference columns.

The worker decides from the type alone: `ModelMismatchError` is permanent (the spec does not fit the
served model; the worker stops at start and the code generator refuses the spec), `InferenceInputError`
is permanent for one file (its columns cannot feed the model), and every other `InferenceError`
(a server unreachable or timing out past the retry deadline) fails the file being processed while the
worker keeps consuming. Messages name the model, its version and the server.
"""

from __future__ import annotations


class InferenceError(RuntimeError):
    """Inference for a file failed: the server was unavailable or timed out past the deadline, or answered
    with an error. The file fails with this message; the worker goes on with the next file."""


class ServerUnavailableError(InferenceError):
    """The Triton server (or the model on it) could not be reached or was not ready before the deadline."""


class InferenceConfigError(InferenceError, ValueError):
    """Inference is asked for but not configured: no or a malformed `TRITON_URL`."""


class ModelMismatchError(InferenceError, ValueError):
    """The spec does not match the served model: unknown model or version, tensor names, dtypes or shapes.

    Permanent: retrying cannot help. The worker stops at start with this message and the code generator
    refuses the spec.
    """


class InferenceInputError(InferenceError, ValueError):
    """A file's columns cannot feed the model: a column is missing, is not of the level's kind (primitive
    per event, list per object), or the counts of one collection's columns differ within an event."""
