"""Prometheus metrics of the worker and the probe endpoint Kubernetes reads.

Owns the metric names (files done/failed, events, bytes, join matched/unmatched per friend, seconds per
stage, result-cache hits/misses, transform processes started) in a registry of their own (so several
workers in one test process do not collide), and a small HTTP server: `/metrics`, `/healthz` (live: the
consumer loop has ticked recently) and `/readyz` (ready: connected and consuming). It reads the consumer's
state through a callable; it imports no messaging code.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


class WorkerMetrics:
    """The worker's counters and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.files_done = Counter("servicex_joiner_files_done", "Files transformed and reported", registry=r)
        self.files_failed = Counter(
            "servicex_joiner_files_failed", "Files reported as failures", ["reason"], registry=r
        )
        self.events = Counter("servicex_joiner_events", "Events written to outputs", registry=r)
        self.events_in = Counter("servicex_joiner_events_read", "Events read from inputs", registry=r)
        self.bytes = Counter("servicex_joiner_output_bytes", "Bytes of stored outputs", registry=r)
        self.matched = Counter(
            "servicex_joiner_join_matched", "Rows matched per friend", ["friend"], registry=r
        )
        self.unmatched = Counter(
            "servicex_joiner_join_unmatched", "Rows without a match per friend", ["friend"], registry=r
        )
        self.stage_seconds = Histogram(
            "servicex_joiner_stage_seconds", "Seconds per stage of one file", ["stage"],
            buckets=_STAGE_BUCKETS, registry=r,
        )
        self.invalid_messages = Counter(
            "servicex_joiner_invalid_messages", "Queue messages rejected as invalid tasks", registry=r
        )
        self.result_cache = Counter(
            "servicex_joiner_result_cache", "Result cache lookups by outcome (hit, miss)", ["outcome"], registry=r
        )
        self.processes_started = Counter(
            "servicex_joiner_transform_processes_started", "Transform processes started (first, after a crash, "
            "a missed deadline or a recycle)", registry=r,
        )
        self.report_failures = Counter(
            "servicex_joiner_report_failures", "file-complete reports the App did not accept", registry=r
        )

    def record_success(
        self,
        *,
        events: int,
        events_in: int,
        output_bytes: int,
        matched: Mapping[str, int],
        unmatched: Mapping[str, int],
        stage_seconds: Mapping[str, float],
        total_seconds: float,
    ) -> None:
        """Count one successfully stored file."""
        self.files_done.inc()
        self.events.inc(events)
        self.events_in.inc(events_in)
        self.bytes.inc(output_bytes)
        for friend, count in matched.items():
            self.matched.labels(friend).inc(count)
        for friend, count in unmatched.items():
            self.unmatched.labels(friend).inc(count)
        for stage, seconds in stage_seconds.items():
            self.stage_seconds.labels(stage).observe(seconds)
        self.stage_seconds.labels("file").observe(total_seconds)

    def record_failure(self, reason: str) -> None:
        """Count one file reported as a failure, by reason label."""
        self.files_failed.labels(reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        data: bytes = generate_latest(self.registry)
        return data


@dataclass(frozen=True)
class Health:
    """A probe answer."""

    live: bool
    ready: bool
    detail: dict[str, object]


class ProbeServer:
    """Serves `/metrics`, `/healthz` and `/readyz` from a daemon thread.

    Args:
        metrics: the metrics to expose.
        health: returns the current `Health`.
        host: bind address.
        port: port (0: any free one; see `port` after `start`).
    """

    def __init__(self, metrics: WorkerMetrics, health: Callable[[], Health], host: str, port: int) -> None:
        self.metrics = metrics
        self.health = health
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, owner.metrics.render(), CONTENT_TYPE_LATEST)
                    return
                if path in ("/healthz", "/readyz"):
                    state = owner.health()
                    ok = state.live if path == "/healthz" else state.live and state.ready
                    body = json.dumps({"live": state.live, "ready": state.ready, **state.detail}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                    return
                self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("probe: %s", format % args)

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="probe-server", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        """Start serving in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def consumer_health(
    *, connected: Callable[[], bool], consuming: Callable[[], bool], last_tick: Callable[[], float],
    stale_after_s: float,
) -> Callable[[], Health]:
    """A health function from the consumer's state: live while its loop ticks, ready while consuming."""

    def health() -> Health:
        age = time.monotonic() - last_tick()
        return Health(
            live=age < stale_after_s,
            ready=connected() and consuming(),
            detail={"seconds_since_tick": round(age, 3)},
        )

    return health
