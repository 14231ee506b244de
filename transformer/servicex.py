"""Callbacks to the ServiceX App: `PUT <service_endpoint>/file-complete`, with bounded retries.

Owns the HTTP side of reporting a file's outcome. A network error or HTTP 5xx is retried here a few times
(with the caller's `sleep`, so a worker keeps its broker connection alive meanwhile) and then raised as
`AppCallbackError` (transient: the caller requeues the message); HTTP 4xx is `AppRejectedError` (the App
will never accept this body). Knows nothing of queues, storage or joins.

Speaks HTTP through urllib3, which sets up TLS only when an endpoint is https: the App's internal endpoint
is plain http, and a client that loads a CA bundle up front costs every worker's start about 0.07 CPU-s.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import urllib3
from urllib3.exceptions import HTTPError

from transformer.errors import AppCallbackError, AppRejectedError
from transformer.models import FILE_COMPLETE_PATH, FileCompleteReport

log = logging.getLogger(__name__)


class AppClient:
    """Client of the App's internal transformation endpoints.

    Args:
        attempts: tries per call before giving up.
        backoff_s: first wait between tries (doubles each time, at most `backoff_max_s`).
        backoff_max_s: longest wait between tries.
        timeout_s: HTTP timeout of one try.
        sleep: how to wait between tries (the worker passes one that serves its broker connection).
    """

    def __init__(
        self,
        *,
        attempts: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.sleep = sleep
        # no retries or redirects inside urllib3: this class retries, and a PUT is never redirected
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(5.0, timeout_s), read=timeout_s), retries=False
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.clear()

    def put_file_complete(self, service_endpoint: str, report: FileCompleteReport) -> None:
        """Send one file-complete report.

        Args:
            service_endpoint: the task's `service_endpoint` (`.../servicex/internal/transformation/<id>`).
            report: the report.

        Raises:
            AppCallbackError: the App could not be reached or kept answering 5xx.
            AppRejectedError: the App answered 4xx.
        """
        url = service_endpoint.rstrip("/") + FILE_COMPLETE_PATH
        body = json.dumps(report.to_wire(), separators=(",", ":"), allow_nan=False).encode()
        delay = self.backoff_s
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._http.request("PUT", url, body=body, headers={"Content-Type": "application/json"})
            except HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            else:
                status, text = response.status, response.data.decode("utf-8", "replace")
                if status < 300:
                    log.info(
                        "request_id=%s file_id=%s file-complete accepted (status %s, %s)",
                        report.request_id,
                        report.file_id,
                        report.status.value,
                        status,
                    )
                    return
                if 400 <= status < 500:
                    raise AppRejectedError(
                        f"the App refused file-complete for file {report.file_id} with HTTP {status}: {text[:200]}"
                    )
                last = f"HTTP {status}: {text[:200]}"
            log.warning(
                "request_id=%s file_id=%s file-complete try %d/%d failed: %s",
                report.request_id,
                report.file_id,
                attempt,
                self.attempts,
                last,
            )
            if attempt < self.attempts:
                self.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
        raise AppCallbackError(f"file-complete to {url} failed after {self.attempts} tries: {last}")
