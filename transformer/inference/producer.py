"""Inference columns as a `ColumnProducer` of the join engine, and `build_producers` for the callers.

`TritonColumnProducer` holds the spec's inference entries and the server address. On first use (or when
the worker calls `connect()` at start) it waits for the server and the models, checks every entry against
its model (`model_check.plan_entry`) and keeps the plans; then, per chunk of joined rows, it gathers each
entry's tensors from the columns, runs them through the client in batches and appends the output columns.
Entries run in spec order, so a later entry may take an earlier one's output as input. The client and its
thread are made lazily in the process that uses them (a producer can be pickled to a worker process).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from prometheus_client import CollectorRegistry

from joiner.engine import ColumnProducer
from joiner.spec import InferenceSpec, JoinSpec
from transformer.inference.client import RetryPolicy, TritonClient, TritonEndpoint
from transformer.inference.columns import empty_results, gather, scatter
from transformer.inference.errors import (
    InferenceConfigError,
    InferenceError,
    InferenceInputError,
    ModelMismatchError,
    ServerUnavailableError,
)
from transformer.inference.metrics import InferenceMetrics
from transformer.inference.model_check import EntryPlan, ModelInfo, plan_entry

log = logging.getLogger(__name__)

DEFAULT_IN_FLIGHT = 4
REPROBE_S = 5.0  # how long later files wait for a server that was already waited for in vain


class TritonColumnProducer:
    """Adds the inference columns of one or more spec entries, computed by one Triton server.

    Args:
        spec_entries: the spec's `inference` entries (or one entry).
        url: the server, as `TRITON_URL` gives it (`host:port` gRPC, `http://host:port` HTTP).
        deadline_s: how long a failing request, or an unreachable server or model not ready, is retried
            before the file fails.
        retries: at most this many retries per request.
        request_timeout_s: one request may take this long.
        in_flight: requests sent at once.
        registry: where the metrics go (default: prometheus_client's default registry).
    """

    def __init__(
        self,
        spec_entries: Sequence[InferenceSpec] | InferenceSpec,
        url: str,
        *,
        deadline_s: float = 60.0,
        retries: int = 10,
        request_timeout_s: float = 60.0,
        in_flight: int = DEFAULT_IN_FLIGHT,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.entries: tuple[InferenceSpec, ...] = (
            (spec_entries,) if isinstance(spec_entries, InferenceSpec) else tuple(spec_entries)
        )
        if not self.entries:
            raise InferenceConfigError("a Triton column producer needs at least one inference entry")
        self.endpoint = TritonEndpoint.parse(url)
        self.policy = RetryPolicy(deadline_s=deadline_s, retries=retries, request_timeout_s=request_timeout_s)
        self.in_flight = max(1, in_flight)
        self._registry = registry
        self._lock = threading.Lock()
        self._client: TritonClient | None = None
        self._models: dict[tuple[str, str | None], ModelInfo] = {}
        self._plans: tuple[EntryPlan, ...] | None = None
        self._served_versions: dict[int, set[str]] = {}
        self._unreachable = False  # the last wait for the server ran out: later files probe briefly
        self.metrics = InferenceMetrics.for_registry(registry)

    # ---- lifecycle -------------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # A copy for another process: no connection, no thread; metrics go to that process's registry.
        state = self.__dict__.copy()
        state.update(_lock=None, _client=None, _plans=None, _models={}, _registry=None, metrics=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self.metrics = InferenceMetrics.for_registry(self._registry)

    def close(self) -> None:
        """Close the connection to the server (a later call reconnects)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            self._plans = None

    def __enter__(self) -> TritonColumnProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, *, deadline_s: float | None = None) -> tuple[EntryPlan, ...]:
        """Wait for the server and every model, and check each entry against its model.

        The worker calls this at start: a `ModelMismatchError` stops it (the spec can never work), a
        `ServerUnavailableError` means the server was not reachable in time (the worker goes on; each
        file then tries again and fails clearly if it still cannot connect). Once a wait has run out,
        later calls without `deadline_s` probe for at most `REPROBE_S` until the server is back, so that
        file after file does not wait the whole deadline for a server that is down.

        Args:
            deadline_s: how long to wait for an unreachable server (default: the producer's deadline).

        Returns:
            The checked plans, one per entry.

        Raises:
            ModelMismatchError: an entry does not fit its model (names, dtypes, shapes, version).
            ServerUnavailableError: the server or a model was not ready before the deadline.
        """
        with self._lock:
            if self._plans is not None:
                return self._plans
            if self._client is None:
                self._client = TritonClient(self.endpoint, self.policy)
            if deadline_s is None:
                deadline_s = min(REPROBE_S, self.policy.deadline_s) if self._unreachable else self.policy.deadline_s
            plans = []
            for entry in self.entries:
                key = (entry.model, entry.version)
                if key not in self._models:
                    try:
                        self._models[key] = self._client.wait_for_model(
                            entry.model, entry.version, deadline_s=deadline_s
                        )
                    except ServerUnavailableError:
                        self._unreachable = True
                        raise
                plans.append(plan_entry(entry, self._models[key], server=str(self.endpoint)))
            self._unreachable = False
            _check_output_names(plans)
            self._plans = tuple(plans)
            log.info(
                "Triton server %s ready for %s",
                self.endpoint,
                ", ".join(f"{p.model}" + (f" v{p.version}" if p.version else "") for p in plans),
            )
            return self._plans

    # ---- ColumnProducer --------------------------------------------------------------------------------

    def __call__(self, table: pa.Table) -> pa.Table:
        """Append every entry's output columns to `table` (same rows, same order).

        Raises:
            InferenceInputError: the table's columns cannot feed a model.
            ServerUnavailableError: the server did not answer within the retries and deadline.
            InferenceError: the server answered with an error.
            ModelMismatchError: an entry does not fit its model.
        """
        plans = self.connect()
        client = self._client
        if client is None:  # closed by another thread meanwhile
            raise InferenceError(f"the producer for Triton server {self.endpoint} was closed")
        for index, plan in enumerate(plans):
            clash = [c for c in plan.output_columns if c in table.column_names]
            if clash:
                raise InferenceInputError(
                    f"model {plan.model!r} would write column(s) {clash}, which the joined rows already have"
                )
            gathered = gather(table, plan)
            bound = self.metrics.labels(plan.model)
            if gathered.n_items == 0:
                results = empty_results(plan)
            else:
                try:
                    outcome = client.infer(
                        plan.model,
                        plan.version,
                        {i.tensor: (i.datatype, gathered.tensors[i.tensor]) for i in plan.inputs},
                        [o.tensor for o in plan.outputs],
                        batch_size=plan.batch_size,
                        in_flight=self.in_flight,
                        metrics=bound,
                    )
                except InferenceError:
                    bound.failures.inc()
                    raise
                results = outcome.outputs
                self._served_versions.setdefault(index, set()).update(outcome.versions)
            for name, array in scatter(gathered, plan, results):
                table = table.append_column(name, array)
        return table

    def describe(self) -> Mapping[str, Any]:
        """Server and models for the output's metadata: name, version asked for and served, columns."""
        models = []
        for index, entry in enumerate(self.entries):
            plan = self._plans[index] if self._plans is not None else None
            info = self._models.get((entry.model, entry.version))
            models.append(
                {
                    "model": entry.model,
                    "version": entry.version,
                    "served_versions": sorted(self._served_versions.get(index, set())),
                    "available_versions": list(info.versions) if info is not None else [],
                    "platform": info.platform if info is not None else None,
                    "level": entry.level,
                    "inputs": {k: list(v) for k, v in entry.inputs.items()},
                    "columns": (list(plan.output_columns) if plan is not None else list(entry.outputs.values())),
                    "batch_size": plan.batch_size if plan is not None else entry.batch_size,
                }
            )
        return {
            "producer": "triton",
            "server": str(self.endpoint),
            "protocol": self.endpoint.protocol.value,
            "models": models,
        }


def _check_output_names(plans: Sequence[EntryPlan]) -> None:
    seen: dict[str, str] = {}
    for plan in plans:
        for column in plan.output_columns:
            if column in seen:
                raise ModelMismatchError(
                    f"inference column {column!r} is written by both model {seen[column]!r} and {plan.model!r}"
                )
            seen[column] = plan.model


def build_producers(
    spec: JoinSpec,
    triton_url: str | None,
    *,
    check: bool = True,
    startup_deadline_s: float = 60.0,
    deadline_s: float = 60.0,
    retries: int = 10,
    request_timeout_s: float = 60.0,
    in_flight: int = DEFAULT_IN_FLIGHT,
    registry: CollectorRegistry | None = None,
) -> list[ColumnProducer]:
    """The column producers of a spec: one Triton producer for all its inference entries, or none.

    With `check` (the default) the server is contacted now: a spec that does not fit its models raises at
    once; a server that stays unreachable for `startup_deadline_s` is logged and the producer returned
    anyway, so each file tries again and fails clearly (the worker keeps running).

    Args:
        spec: the join spec.
        triton_url: `TRITON_URL` (`host:port` for gRPC, `http://host:port` for HTTP); None if unset.
        check: wait for the server and check the entries against the models now.
        startup_deadline_s: how long `check` waits for an unreachable server.
        deadline_s: per-file retry deadline (see `TritonColumnProducer`).
        retries: retries per request.
        request_timeout_s: time limit of one request.
        in_flight: requests at once.
        registry: where the metrics go.

    Returns:
        An empty list when the spec has no inference entries, else one producer.

    Raises:
        InferenceConfigError: the spec has inference entries but no (or a malformed) URL is set.
        ModelMismatchError: with `check`, an entry does not fit its model.
    """
    if not spec.inference:
        return []
    if not triton_url or not triton_url.strip():
        models = ", ".join(repr(e.model) for e in spec.inference)
        raise InferenceConfigError(
            f"the join spec asks for inference with model(s) {models} but no Triton server is configured: "
            "set TRITON_URL (host:port for gRPC, http://host:port for HTTP)"
        )
    producer = TritonColumnProducer(
        spec.inference,
        triton_url,
        deadline_s=deadline_s,
        retries=retries,
        request_timeout_s=request_timeout_s,
        in_flight=in_flight,
        registry=registry,
    )
    if check:
        try:
            producer.connect(deadline_s=startup_deadline_s)
        except ServerUnavailableError as error:
            log.error("%s; files will fail until it is reachable", error)
        except BaseException:
            producer.close()
            raise
    return [producer]


def check_spec_against_server(spec: JoinSpec, triton_url: str | None, *, timeout_s: float = 5.0) -> bool:
    """For the code generator: refuse a spec whose inference entries do not fit the served models.

    Args:
        spec: the join spec.
        triton_url: the facility's `TRITON_URL`, or None.
        timeout_s: how long to try to reach the server.

    Returns:
        True if the server was reached and every entry fits; False if no check was possible (no inference
        entries count as True; no URL or an unreachable server give False).

    Raises:
        ModelMismatchError: an entry does not fit its model.
        InferenceConfigError: the URL is malformed.
    """
    if not spec.inference:
        return True
    if not triton_url:
        return False
    producer = TritonColumnProducer(
        spec.inference, triton_url, deadline_s=timeout_s, retries=1, request_timeout_s=timeout_s
    )
    try:
        producer.connect(deadline_s=timeout_s)
    except ServerUnavailableError as error:
        log.warning("could not check the inference entries against the server: %s", error)
        return False
    finally:
        producer.close()
    return True
