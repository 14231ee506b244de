"""Inference columns through a Triton Inference Server (DESIGN §5).

The public face: `build_producers(spec, os.environ.get("TRITON_URL"))` for the local command and the
worker, `check_spec_against_server` for the code generator, `TritonColumnProducer`, and the error types.
The submodules: `client` (tritonclient, batches, retries), `model_check` (spec vs model), `columns` (Arrow
columns to tensors and back), `producer` (the engine's `ColumnProducer`), `metrics` (Prometheus).
Importing this package does not import tritonclient; making a producer's client does.
"""

from __future__ import annotations

from transformer.inference.errors import (
    InferenceConfigError,
    InferenceError,
    InferenceInputError,
    ModelMismatchError,
    ServerUnavailableError,
)
from transformer.inference.producer import TritonColumnProducer, build_producers, check_spec_against_server

__all__ = [
    "InferenceConfigError",
    "InferenceError",
    "InferenceInputError",
    "ModelMismatchError",
    "ServerUnavailableError",
    "TritonColumnProducer",
    "build_producers",
    "check_spec_against_server",
]
