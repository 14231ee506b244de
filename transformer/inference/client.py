"""The Triton client: one server address, asynchronous requests with retries, a synchronous face.

`TritonEndpoint.parse` reads `TRITON_URL` (`host:port` or `grpc://host:port` for gRPC, `http(s)://host:port`
for HTTP). `TritonClient` runs tritonclient's asyncio client (gRPC or HTTP) on an event loop of its own
thread, so the engine's synchronous code can send many fixed-size batches with several requests in flight.
It retries UNAVAILABLE answers, timeouts and lost connections with exponential backoff until a deadline,
then raises `ServerUnavailableError`; other server errors raise `InferenceError` at once. It knows nothing
of tables and columns (that is `columns.py`) nor of the spec (that is `model_check.py`).
tritonclient is imported only when a client is made, so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from transformer.inference.errors import (
    InferenceConfigError,
    InferenceError,
    ModelMismatchError,
    ServerUnavailableError,
)
from transformer.inference.metrics import BoundMetrics
from transformer.inference.model_check import ModelInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

# Status codes worth a retry: the server is away, overloaded or slow (gRPC names, HTTP codes).
_RETRYABLE_STATUS = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.DEADLINE_EXCEEDED",
    "StatusCode.RESOURCE_EXHAUSTED",
    "StatusCode.ABORTED",
    "StatusCode.CANCELLED",
    "502",
    "503",
    "504",
    "429",
}
_NOT_FOUND_STATUS = {"StatusCode.NOT_FOUND", "404"}
_GRPC_MAX_MESSAGE = 2**31 - 1


class Protocol(StrEnum):
    """How the client talks to Triton."""

    GRPC = "grpc"
    HTTP = "http"


@dataclass(frozen=True)
class TritonEndpoint:
    """A Triton server address as `TRITON_URL` gives it."""

    protocol: Protocol
    host_port: str
    ssl: bool = False

    @classmethod
    def parse(cls, url: str) -> TritonEndpoint:
        """Read `host:port` / `grpc://host:port` (gRPC) or `http://host:port` / `https://host:port` (HTTP).

        Args:
            url: the address.

        Returns:
            The endpoint.

        Raises:
            InferenceConfigError: the address is empty or not of these forms.
        """
        text = url.strip()
        if not text:
            raise InferenceConfigError("TRITON_URL is empty")
        if "://" not in text:
            text = "grpc://" + text
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        known = scheme in ("grpc", "grpcs", "http", "https")
        if not known or not parts.hostname or parts.path not in ("", "/"):
            raise InferenceConfigError(f"TRITON_URL {url!r} is not host:port (gRPC) or http://host:port (HTTP)")
        try:
            port = parts.port
        except ValueError:
            raise InferenceConfigError(f"TRITON_URL {url!r} has an invalid port") from None
        if port is None:
            raise InferenceConfigError(f"TRITON_URL {url!r} has no port (gRPC is usually 8001, HTTP 8000)")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        protocol = Protocol.GRPC if scheme.startswith("grpc") else Protocol.HTTP
        return cls(protocol, f"{host}:{port}", ssl=scheme in ("grpcs", "https"))

    def __str__(self) -> str:
        scheme = {Protocol.GRPC: "grpc", Protocol.HTTP: "http"}[self.protocol] + ("s" if self.ssl else "")
        return f"{scheme}://{self.host_port}"


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a request, or a server that is not ready.

    Attributes:
        deadline_s: give up a request this long after its first failure (and a server or model that is not
            ready this long after the first try).
        retries: at most this many retries per request.
        request_timeout_s: one request (one batch) may take this long before it counts as a timeout.
        backoff_s: the first pause; it doubles each retry up to `max_backoff_s`.
        max_backoff_s: the longest pause.
    """

    deadline_s: float = 60.0
    retries: int = 10
    request_timeout_s: float = 60.0
    backoff_s: float = 0.1
    max_backoff_s: float = 5.0

    def pause(self, attempt: int) -> float:
        """The pause before retry number `attempt` (1-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


@dataclass
class InferOutcome:
    """The outputs over all rows, and what the server said about itself while answering."""

    outputs: dict[str, np.ndarray[Any, Any]]
    versions: set[str] = field(default_factory=set)
    batches: int = 0
    retries: int = 0


@dataclass
class _Job:
    """One `infer` call: what to send and where the answers and counts go."""

    model: str
    version: str | None
    inputs: Mapping[str, tuple[str, np.ndarray[Any, Any]]]
    outputs: Sequence[str]
    outcome: InferOutcome
    metrics: BoundMetrics | None


class _LoopThread:
    """An asyncio event loop running forever in a daemon thread; coroutines are submitted to it."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()  # a forked child inherits the loop object but not its thread
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(drain(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        self.loop.close()


def _close(loop_thread: _LoopThread, holder: dict[str, Any]) -> None:
    """Close the aio client in its loop, then stop the loop (also run at exit for a forgotten client)."""
    client = holder.pop("client", None)
    if loop_thread.pid != os.getpid():
        return
    if client is not None and not loop_thread.loop.is_closed() and loop_thread.loop.is_running():
        try:
            asyncio.run_coroutine_threadsafe(client.close(), loop_thread.loop).result(timeout=10)
        except (OSError, RuntimeError, TimeoutError, asyncio.CancelledError) as error:
            log.warning("closing the Triton client failed: %s", error)
    loop_thread.stop()


class TritonClient:
    """A synchronous client of one Triton server, with asynchronous batches inside.

    Args:
        endpoint: the server.
        policy: retries, deadlines and timeouts.

    Use as a context manager, or call `close()`; a forgotten client is closed at interpreter exit.
    """

    def __init__(self, endpoint: TritonEndpoint, policy: RetryPolicy | None = None) -> None:
        self.endpoint = endpoint
        self.policy = policy or RetryPolicy()
        if endpoint.protocol is Protocol.GRPC:
            import tritonclient.grpc.aio as aio_module
        else:
            import tritonclient.http.aio as aio_module
        from tritonclient.utils import InferenceServerException

        self._aio: Any = aio_module
        self._server_exception: type[Exception] = InferenceServerException
        self._retryable_types = self._transport_errors()
        self._loop = _LoopThread(name=f"triton-{endpoint.host_port}")
        self._holder: dict[str, Any] = {}
        self._loop.run(self._open())
        self._finalizer = weakref.finalize(self, _close, self._loop, self._holder)

    def _transport_errors(self) -> tuple[type[BaseException], ...]:
        errors: list[type[BaseException]] = [TimeoutError, ConnectionError]
        if self.endpoint.protocol is Protocol.HTTP:
            import aiohttp

            errors += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
        return tuple(errors)

    async def _open(self) -> None:
        if self.endpoint.protocol is Protocol.GRPC:
            options = [
                ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE),
                ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE),
                # reconnect soon after a server comes back (gRPC's default backoff grows to 2 minutes)
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ]
            self._holder["client"] = self._aio.InferenceServerClient(
                self.endpoint.host_port, ssl=self.endpoint.ssl, channel_args=options
            )
        else:
            self._holder["client"] = self._aio.InferenceServerClient(
                self.endpoint.host_port, ssl=self.endpoint.ssl, conn_timeout=self.policy.request_timeout_s
            )

    @property
    def _client(self) -> Any:
        client = self._holder.get("client")
        if client is None:
            raise InferenceError(f"the client of Triton server {self.endpoint} is closed")
        return client

    def close(self) -> None:
        """Close the connection and stop the client's thread. Idempotent."""
        self._finalizer()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- errors ----------------------------------------------------------------------------------------

    def _is_retryable(self, error: BaseException) -> bool:
        if isinstance(error, self._server_exception):
            return str(error.status()) in _RETRYABLE_STATUS  # type: ignore[attr-defined]
        return isinstance(error, self._retryable_types)

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, self._server_exception):
            message = error.message() if hasattr(error, "message") else str(error)
            return f"{error.status()}: {message}"  # type: ignore[attr-defined]
        if isinstance(error, TimeoutError):
            return f"no answer within {self.policy.request_timeout_s:g}s"
        return f"{type(error).__name__}: {error}"

    def _catchable(self) -> tuple[type[BaseException], ...]:
        return (self._server_exception, *self._retryable_types, OSError)

    # ---- server and model state ------------------------------------------------------------------------

    def is_live(self, timeout_s: float = 5.0) -> bool:
        """Whether the server answers its liveness probe within `timeout_s` (never raises)."""

        async def probe() -> bool:
            try:
                return bool(await asyncio.wait_for(self._client.is_server_live(), timeout_s))
            except self._catchable():
                return False

        return self._loop.run(probe())

    def wait_for_model(self, model: str, version: str | None, *, deadline_s: float | None = None) -> ModelInfo:
        """Wait until the server is live and the model ready, then read the model's metadata and config.

        Args:
            model: model name.
            version: pinned version, or None for the server's choice.
            deadline_s: how long to wait for an unreachable server or a model still loading
                (default: the policy's deadline).

        Returns:
            The served model.

        Raises:
            ModelMismatchError: the server is up and does not serve this model or version.
            ServerUnavailableError: the server or model was not ready before the deadline.
        """
        deadline = self.policy.deadline_s if deadline_s is None else deadline_s
        return self._loop.run(self._wait_for_model(model, version, deadline))

    async def _wait_for_model(self, model: str, version: str | None, deadline_s: float) -> ModelInfo:
        client = self._client
        grpc = self.endpoint.protocol is Protocol.GRPC
        start = time.monotonic()
        attempt = 0
        what = f"model {model!r}" + (f" version {version}" if version else "")
        while True:
            attempt += 1
            try:
                state = await asyncio.wait_for(self._model_state(model, version), self.policy.request_timeout_s)
                if state == "READY":
                    if grpc:
                        metadata = await client.get_model_metadata(model, version or "", as_json=True)
                        config = (await client.get_model_config(model, version or "", as_json=True))["config"]
                    else:
                        metadata = await client.get_model_metadata(model, version or "")
                        config = await client.get_model_config(model, version or "")
                    return ModelInfo.from_metadata(metadata, config, server=str(self.endpoint))
                last = state
            except self._catchable() as error:
                if not self._is_retryable(error) and not isinstance(error, OSError):
                    if str(getattr(error, "status", lambda: "")()) in _NOT_FOUND_STATUS:
                        raise ModelMismatchError(
                            f"{what} is not served by Triton server {self.endpoint}: {self._describe(error)}"
                        ) from None
                    raise InferenceError(
                        f"Triton server {self.endpoint} refused the checks of {what}: {self._describe(error)}"
                    ) from None
                last = f"server unreachable ({self._describe(error)})"
            elapsed = time.monotonic() - start
            if elapsed >= deadline_s:
                raise ServerUnavailableError(
                    f"Triton server {self.endpoint} did not have {what} ready within {deadline_s:g}s "
                    f"({attempt} tries): {last}"
                )
            if attempt == 1:
                log.info("waiting for %s on Triton server %s: %s", what, self.endpoint, last)
            await asyncio.sleep(min(self.policy.pause(attempt), max(0.0, deadline_s - elapsed)))

    async def _model_state(self, model: str, version: str | None) -> str:
        """'READY', or a sentence saying why not; raises ModelMismatchError for an unknown model/version."""
        client = self._client
        if not await client.is_server_live():
            return "server is not live"
        if await client.is_model_ready(model, version or ""):
            return "READY"
        try:
            if self.endpoint.protocol is Protocol.GRPC:
                index = (await client.get_model_repository_index(as_json=True)).get("models", [])
            else:
                index = await client.get_model_repository_index()
        except self._server_exception:  # the repository API may be disabled on a production server
            return "model is not ready"
        entries = [e for e in index if e.get("name") == model]
        if not entries:
            if index or await client.is_server_ready():
                served = sorted({str(e.get("name")) for e in index})
                raise ModelMismatchError(
                    f"model {model!r} is not served by Triton server {self.endpoint} (it serves: {served})"
                )
            return "server is not ready (models loading)"
        versioned = [e for e in entries if e.get("version")]
        if version is not None and versioned and all(str(e.get("version")) != version for e in versioned):
            served_versions = sorted(str(e.get("version")) for e in versioned)
            raise ModelMismatchError(
                f"model {model!r} version {version} is not served by Triton server {self.endpoint} "
                f"(versions: {served_versions})"
            )
        states = "; ".join(f"{e.get('state', '?')}" + (f" ({e['reason']})" if e.get("reason") else "") for e in entries)
        return f"model is not ready: {states}"

    # ---- inference -------------------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        version: str | None,
        inputs: Mapping[str, tuple[str, np.ndarray[Any, Any]]],
        outputs: Sequence[str],
        *,
        batch_size: int,
        in_flight: int,
        metrics: BoundMetrics | None = None,
    ) -> InferOutcome:
        """Run the model over all rows: fixed-size batches, `in_flight` requests at a time, in order.

        Args:
            model: model name.
            version: pinned version, or None.
            inputs: tensor name -> (Triton datatype, array [n_rows, ...]); all with the same n_rows > 0.
            outputs: output tensor names to ask for.
            batch_size: rows per request.
            in_flight: requests sent before waiting for an answer.
            metrics: counters to update.

        Returns:
            Each output over all rows, concatenated in row order.

        Raises:
            ServerUnavailableError: a batch still failed (UNAVAILABLE, timeout, lost connection) after the
                retries or the deadline.
            InferenceError: the server answered a batch with another error.
        """
        job = _Job(model, version, inputs, outputs, InferOutcome(outputs={}), metrics)
        return self._loop.run(self._infer_all(job, batch_size=batch_size, in_flight=max(1, in_flight)))

    async def _infer_all(self, job: _Job, *, batch_size: int, in_flight: int) -> InferOutcome:
        n_rows = next(iter(job.inputs.values()))[1].shape[0]
        n_batches = math.ceil(n_rows / batch_size)
        parts: list[dict[str, np.ndarray[Any, Any]] | None] = [None] * n_batches
        outcome = job.outcome
        order = iter(range(n_batches))

        async def worker() -> None:
            for index in order:  # the iterator is shared: each batch goes to one worker
                start = index * batch_size
                stop = min(n_rows, start + batch_size)
                parts[index] = await self._infer_batch(job, start, stop)

        tasks = [asyncio.create_task(worker()) for _ in range(min(in_flight, n_batches))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for name in job.outputs:
            arrays = [p[name] for p in parts if p is not None]
            outcome.outputs[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        return outcome

    async def _infer_batch(self, job: _Job, start: int, stop: int) -> dict[str, np.ndarray[Any, Any]]:
        model, version, outputs = job.model, job.version, job.outputs
        outcome, metrics = job.outcome, job.metrics
        aio = self._aio
        policy = self.policy
        grpc = self.endpoint.protocol is Protocol.GRPC
        first_failure: float | None = None
        attempt = 0
        while True:
            tensors = []
            for name, (datatype, array) in job.inputs.items():
                part = np.ascontiguousarray(array[start:stop])
                tensor = aio.InferInput(name, list(part.shape), datatype)
                tensor.set_data_from_numpy(part)
                tensors.append(tensor)
            wanted = [aio.InferRequestedOutput(name) for name in outputs]
            extra = {"client_timeout": policy.request_timeout_s} if grpc else {}
            began = time.perf_counter()
            try:
                result = await asyncio.wait_for(
                    self._client.infer(model, tensors, model_version=version or "", outputs=wanted, **extra),
                    policy.request_timeout_s,
                )
            except self._catchable() as error:
                if not self._is_retryable(error) and not isinstance(error, OSError):
                    raise InferenceError(
                        f"Triton server {self.endpoint} failed model {model!r} on rows {start}..{stop - 1}: "
                        f"{self._describe(error)}"
                    ) from None
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                attempt += 1
                waited = now - first_failure
                if attempt > policy.retries or waited >= policy.deadline_s:
                    raise ServerUnavailableError(
                        f"Triton server {self.endpoint} did not answer model {model!r} for rows "
                        f"{start}..{stop - 1} after {attempt} tries over {waited:.1f}s (limits: "
                        f"{policy.retries} retries, {policy.deadline_s:g}s): {self._describe(error)}"
                    ) from None
                outcome.retries += 1
                if metrics is not None:
                    metrics.retries.inc()
                log.warning(
                    "retrying model %s rows %d..%d on %s (try %d): %s",
                    model,
                    start,
                    stop - 1,
                    self.endpoint,
                    attempt,
                    self._describe(error),
                )
                await asyncio.sleep(min(policy.pause(attempt), max(0.0, policy.deadline_s - waited)))
                continue
            latency = time.perf_counter() - began
            response = result.get_response()
            served = response.model_version if grpc else response.get("model_version", "")
            if served:
                outcome.versions.add(str(served))
            outcome.batches += 1
            if metrics is not None:
                metrics.batch_latency.observe(latency)
                metrics.batches.inc()
                metrics.rows.inc(stop - start)
            answer = {}
            for name in outputs:
                array = result.as_numpy(name)
                if array is None or array.shape[0] != stop - start:
                    raise InferenceError(
                        f"Triton server {self.endpoint}: model {model!r} answered rows {start}..{stop - 1} "
                        f"without output {name!r} of {stop - start} rows"
                    )
                answer[name] = array
            return answer
