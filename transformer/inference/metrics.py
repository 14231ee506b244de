"""Prometheus metrics of inference columns: rows inferred, batches, latency per batch, retries, failures.

The metrics live in a registry the caller passes (the worker's, a test's) or prometheus_client's default
one; each registry gets its set once (a cached factory, no module state mutated at run time), so any number
of producers in one process share the same counters, labelled by model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class InferenceMetrics:
    """The inference metrics of one registry. Obtain with `InferenceMetrics.for_registry`."""

    rows: Counter
    batches: Counter
    batch_latency: Histogram
    retries: Counter
    failures: Counter

    @staticmethod
    def for_registry(registry: CollectorRegistry | None = None) -> InferenceMetrics:
        """The metrics registered in `registry` (default: prometheus_client's default registry).

        Args:
            registry: where to register; the same registry always gives the same object.

        Returns:
            The metrics, registered on first use.
        """
        return _metrics_for(REGISTRY if registry is None else registry)

    def labels(self, model: str) -> BoundMetrics:
        """The metrics of one model."""
        return BoundMetrics(
            rows=self.rows.labels(model=model),
            batches=self.batches.labels(model=model),
            batch_latency=self.batch_latency.labels(model=model),
            retries=self.retries.labels(model=model),
            failures=self.failures.labels(model=model),
        )


@dataclass(frozen=True)
class BoundMetrics:
    """The metrics of one model (label values applied)."""

    rows: Any
    batches: Any
    batch_latency: Any
    retries: Any
    failures: Any


@functools.cache
def _metrics_for(registry: CollectorRegistry) -> InferenceMetrics:
    return InferenceMetrics(
        rows=Counter(
            "servicex_joiner_inference_rows",
            "Rows (events or objects) sent through a Triton model",
            ["model"],
            registry=registry,
        ),
        batches=Counter(
            "servicex_joiner_inference_batches",
            "Inference requests answered by the Triton server",
            ["model"],
            registry=registry,
        ),
        batch_latency=Histogram(
            "servicex_joiner_inference_batch_seconds",
            "Latency of one inference request (one batch), seconds",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        retries=Counter(
            "servicex_joiner_inference_retries",
            "Inference requests retried after UNAVAILABLE, a timeout or a lost connection",
            ["model"],
            registry=registry,
        ),
        failures=Counter(
            "servicex_joiner_inference_failures",
            "Chunks whose inference failed (the file fails)",
            ["model"],
            registry=registry,
        ),
    )
