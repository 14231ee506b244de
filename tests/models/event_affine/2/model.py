"""Test model `event_affine`: OUTPUT__0 = (x0 + 2*x1 + (version - 1), x0 * x1) per row, as float32.

The same file serves versions 1 and 2 (it reads its version from Triton's arguments).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend


class TritonPythonModel:
    """Triton Python-backend model."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Remember the version's offset."""
        self.offset = float(args["model_version"]) - 1.0

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer each request of the batch."""
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT__0").as_numpy().astype(np.float64)
            out = np.stack([x[:, 0] + 2.0 * x[:, 1] + self.offset, x[:, 0] * x[:, 1]], axis=1)
            tensor = pb_utils.Tensor("OUTPUT__0", out.astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
