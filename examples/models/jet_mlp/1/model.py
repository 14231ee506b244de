"""Triton Python-backend model `jet_mlp`: score = sigmoid(relu(x @ W1 + b1) @ W2 + b2), in plain numpy.

It reads `weights.npz` from the model's directory (next to `config.pbtxt`) once at load, and answers every
request of a dynamic batch in one matrix product. It needs only numpy and Triton's
`triton_python_backend_utils`, so any Triton with the Python backend (CPU or GPU build) serves it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend


class TritonPythonModel:
    """The model object Triton's Python backend instantiates once per model instance."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Load the weights.

        Args:
            args: Triton's model arguments; `model_repository` is this model's directory.
        """
        weights = np.load(os.path.join(args["model_repository"], "weights.npz"))
        self.w1 = weights["W1"].astype(np.float32)
        self.b1 = weights["b1"].astype(np.float32)
        self.w2 = weights["W2"].astype(np.float32)
        self.b2 = weights["b2"].astype(np.float32)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score every row of every request of this (dynamic) batch in one pass.

        Args:
            requests: Triton inference requests, each with `INPUT__0` of shape [n, 3].

        Returns:
            One response per request with `OUTPUT__0` of shape [n, 1].
        """
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT__0").as_numpy() for r in requests]
        sizes = [x.shape[0] for x in inputs]
        x = np.concatenate(inputs, axis=0).astype(np.float32, copy=False)
        hidden = np.maximum(x @ self.w1 + self.b1, np.float32(0.0))
        logits = hidden @ self.w2 + self.b2
        scores = (np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))).astype(np.float32)
        responses = []
        start = 0
        for size in sizes:
            out = pb_utils.Tensor("OUTPUT__0", scores[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += size
        return responses
