"""Callbacks to the ServiceX App: `PUT <service_endpoint>/file-complete`, with bounded retries.

Owns the HTTP side of reporting a file's outcome. A network error or HTTP 5xx is retried here a few times
(with the caller's `sleep`, so a worker keeps its broker connection alive meanwhile) and then raised as
`AppCallbackError` (transient: the caller requeues the message); HTTP 4xx is `AppRejectedError` (the App
will never accept this body). Knows nothing of queues, storage or joins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

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
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)))

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

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
        body = report.to_wire()
        delay = self.backoff_s
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._http.put(url, json=body)
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 300:
                    log.info(
                        "request_id=%s file_id=%s file-complete accepted (status %s, %s)",
                        report.request_id,
                        report.file_id,
                        report.status.value,
                        response.status_code,
                    )
                    return
                if 400 <= response.status_code < 500:
                    raise AppRejectedError(
                        f"the App refused file-complete for file {report.file_id} with HTTP "
                        f"{response.status_code}: {response.text[:200]}"
                    )
                last = f"HTTP {response.status_code}: {response.text[:200]}"
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
