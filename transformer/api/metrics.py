"""Prometheus metrics of the code generator, in a registry of its own (one per application).

Owns the metric names: requests by outcome, seconds per request, friend files and bytes of accepted specs.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Outcome(StrEnum):
    """How one code-generation request ended."""

    GENERATED = "generated"
    REFUSED = "refused"  # a bad or refused spec: the user's to fix
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"  # not `{"code": <selection>}`
    ERROR = "error"  # ours to fix


class CodegenMetrics:
    """The code generator's counters and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "servicex_joiner_codegen_requests", "Code-generation requests by outcome", ["outcome"], registry=r
        )
        self.seconds = Histogram(
            "servicex_joiner_codegen_seconds",
            "Seconds to answer one code-generation request",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.friend_files = Histogram(
            "servicex_joiner_codegen_friend_files",
            "Friend files named by accepted specs",
            buckets=(0, 1, 2, 5, 10, 100, 1000, 10_000),
            registry=r,
        )
        self.friend_bytes = Counter(
            "servicex_joiner_codegen_friend_bytes", "Bytes of friend files of accepted specs", registry=r
        )
        for outcome in Outcome:
            self.requests.labels(outcome=outcome.value)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
