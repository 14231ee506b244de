"""`servicex-joiner worker`: the ServiceX transformer that consumes a request's queue (sidecar role).

Wires the parts for the sidecar-replacement mode of DESIGN.md §3: the pika consumer of
`transformer-<request_id>`, the Celery codec, one supervised long-lived transform process that serves the
files one after another (`transformer.task.JobRunner` through `transformer.supervise`; replaced after a
crash, a missed deadline or `JOINER_CHILD_MAX_FILES` files), the App's file-complete callback, metrics and
probes. Owns the policy
across one delivery: an invalid message is rejected (never requeued) and logged with its delivery tag; a
file's outcome is reported, then acked; a report the App does not accept is retried, then nacked with
requeue after a delay (the finished result is remembered, so the redelivery only reports), and past an
overall deadline acked with an error naming the file; a redelivery of a file this worker already reported
is acked at once. Graceful SIGTERM: the current file finishes, consuming stops, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from transformer.errors import AppCallbackError, AppRejectedError, FileDeadlineError, TransformCrashError
from transformer.job import RESULT_FORMATS, CacheUse, FileJob, FileOutcome, load_spec_text, make_runner
from transformer.messaging.codec import decode_task
from transformer.messaging.consumer import Action, ConsumerError, Decision, Delivery, Pump, QueueConsumer
from transformer.metrics import ProbeServer, WorkerMetrics, consumer_health
from transformer.models import (
    FileCompleteReport,
    FileStatus,
    Place,
    ResultDestination,
    TransformTask,
    queue_name,
)
from transformer.servicex import AppClient
from transformer.settings import Settings, get_settings
from transformer.supervise import Supervisor
from transformer.worker_start import CHILD_PRELOAD

log = logging.getLogger(__name__)

_REMEMBERED_FILES = 100_000


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker process serves (from the command line)."""

    request_id: str
    rabbit_uri: str
    spec_path: str
    result_destination: ResultDestination = ResultDestination.OBJECT_STORE
    result_format: str = "parquet"
    output_dir: str | None = None


def _stages(seconds: Mapping[str, float]) -> str:
    """Stage seconds for the log line of a file, slowest first (where the time of a slow file went)."""
    shown = sorted(((stage, value) for stage, value in seconds.items() if stage != "total"), key=lambda s: -s[1])
    return ", ".join(f"{stage} {value:.2f}" for stage, value in shown) or "no stages"


class FileHandler:
    """Handles one delivery at a time: decode, transform in the transform process, report, decide.

    Args:
        config: the worker's configuration.
        settings: the settings.
        supervisor: runs the files in its long-lived child process (`JobRunner` there).
        metrics: the metrics to update.
    """

    def __init__(
        self,
        config: WorkerConfig,
        settings: Settings,
        supervisor: Supervisor[FileJob, FileOutcome],
        metrics: WorkerMetrics,
    ) -> None:
        self.config = config
        self.settings = settings
        self.supervisor = supervisor
        self.metrics = metrics
        self.spec_text, self.spec_error = load_spec_text(config.spec_path)
        if self.spec_error:
            log.error("request_id=%s the join spec is unusable; every file will fail: %s",
                      config.request_id, self.spec_error)
        self.place = Place(
            host_name=settings.place.host_name, site=settings.place.site, pod=settings.place.pod_name
        )
        self._pump: Pump | None = None
        worker = settings.worker
        self.app = AppClient(
            attempts=3, backoff_s=min(1.0, worker.backoff_s), backoff_max_s=worker.backoff_max_s,
            sleep=self._sleep,
        )
        self._children_counted = 0
        self._reported: OrderedDict[tuple[str, int], FileStatus] = OrderedDict()
        self._pending: dict[tuple[str, int], tuple[FileCompleteReport, float]] = {}

    def close(self) -> None:
        """Stop the transform process and release the HTTP client."""
        self.supervisor.close()
        self.app.close()

    def _sleep(self, seconds: float) -> None:
        if self._pump is not None:
            self._pump(seconds)
        else:
            time.sleep(seconds)

    def __call__(self, delivery: Delivery, pump: Pump) -> Decision:
        """Handle one delivery; never raises for anything a message or a file can do."""
        self._pump = pump
        try:
            return self._handle(delivery, pump)
        finally:
            self._pump = None

    def _handle(self, delivery: Delivery, pump: Pump) -> Decision:
        try:
            decoded = decode_task(
                delivery.body, delivery.headers,
                content_type=delivery.content_type, content_encoding=delivery.content_encoding,
            )
        except ValueError as error:  # InvalidMessageError
            self.metrics.invalid_messages.inc()
            log.error(
                "request_id=%s delivery_tag=%s rejected without requeue: invalid task message: %s",
                self.config.request_id, delivery.delivery_tag, error,
            )
            return Decision(Action.REJECT, str(error))
        task = decoded.task
        key = (task.request_id, task.file_id)
        if key in self._reported:
            log.info("request_id=%s file_id=%s redelivered after its report was accepted; acking",
                     *key)
            return Decision(Action.ACK, "already reported")
        pending = self._pending.get(key)
        if pending is None:
            log.info("request_id=%s file_id=%s task %s received (paths %s, format %s, redelivered %s)",
                     task.request_id, task.file_id, decoded.task_id, task.paths, task.result_format,
                     delivery.redelivered)
            outcome = self._transform(task, pump)
            report = self._record(task, outcome)
            first_failure: float | None = None
        else:
            report, first_failure = pending
            log.info("request_id=%s file_id=%s retrying its earlier file-complete report", *key)
        return self._report(task, report, first_failure, pump)

    def _transform(self, task: TransformTask, pump: Pump) -> FileOutcome:
        started = time.monotonic()
        job = FileJob(
            task=task, spec_text=self.spec_text, spec_error=self.spec_error,
            settings=self.settings, output_dir=self.config.output_dir,
        )
        worker = self.settings.worker
        label = f"request_id={task.request_id} file_id={task.file_id}"
        last: TransformCrashError | None = None
        try:
            for attempt in range(1, worker.crash_attempts + 1):
                try:
                    return self.supervisor.run(job, deadline_s=worker.file_deadline_s, pump=pump, label=label)
                except FileDeadlineError as error:
                    log.error("%s %s; a fresh transform process serves the next file", label, error)
                    return FileOutcome.failure(task.paths[0], str(error), "deadline", started)
                except TransformCrashError as error:
                    last = error
                    log.error("%s %s (try %d/%d)", label, error, attempt, worker.crash_attempts)
                    if attempt < worker.crash_attempts:
                        pump(min(worker.backoff_s, 5.0))
        finally:
            started_now = self.supervisor.children_started - self._children_counted
            self._children_counted += started_now
            self.metrics.processes_started.inc(started_now)
        reason = f"{last} ({worker.crash_attempts} tries)"
        return FileOutcome.failure(task.paths[0], reason, "crash", started)

    def _record(self, task: TransformTask, outcome: FileOutcome) -> FileCompleteReport:
        ids = (task.request_id, task.file_id)
        if outcome.cache is not CacheUse.OFF:
            self.metrics.result_cache.labels(outcome.cache.value).inc()
        if outcome.status is FileStatus.SUCCESS:
            self.metrics.record_success(
                events=outcome.total_events, events_in=outcome.events_in, output_bytes=outcome.total_bytes,
                matched=outcome.matched, unmatched=outcome.unmatched, stage_seconds=outcome.stage_seconds,
                total_seconds=outcome.seconds,
            )
            log.info("request_id=%s file_id=%s done: %d events, object %s (%d bytes) in %.2f s (%s; result cache: %s)",
                     *ids, outcome.total_events, outcome.object_name, outcome.total_bytes, outcome.seconds,
                     _stages(outcome.stage_seconds), outcome.cache.value)
        else:
            self.metrics.record_failure(outcome.reason_kind or "other")
            log.error("request_id=%s file_id=%s FAILED (%s) for %s: %s",
                      *ids, outcome.reason_kind, outcome.file_path, outcome.reason)
        return FileCompleteReport.build(
            task, file_path=outcome.file_path, status=outcome.status, total_time=outcome.seconds,
            total_events=outcome.total_events, total_bytes=outcome.total_bytes,
            s3_object_name=outcome.object_name, place=self.place,
        )

    def _report(
        self, task: TransformTask, report: FileCompleteReport, first_failure: float | None, pump: Pump
    ) -> Decision:
        key = (task.request_id, task.file_id)
        try:
            self.app.put_file_complete(task.service_endpoint, report)
        except AppRejectedError as error:
            self._pending.pop(key, None)
            self._remember(key, report.status)
            log.error("request_id=%s file_id=%s (%s) report refused, acking: %s",
                      *key, report.file_path, error)
            return Decision(Action.ACK, str(error))
        except AppCallbackError as error:
            self.metrics.report_failures.inc()
            now = time.monotonic()
            first = first_failure if first_failure is not None else now
            worker = self.settings.worker
            if now - first >= worker.report_deadline_s:
                self._pending.pop(key, None)
                log.error(
                    "request_id=%s file_id=%s giving up reporting %s (%s) after %.0f s: the App never "
                    "accepted file-complete; acking: %s",
                    *key, report.file_path, report.status.value, now - first, error,
                )
                return Decision(Action.ACK, "report deadline passed")
            self._pending[key] = (report, first)
            log.warning("request_id=%s file_id=%s report not accepted (%s); requeueing in %.1f s",
                        *key, error, worker.report_requeue_delay_s)
            pump(worker.report_requeue_delay_s)
            return Decision(Action.REQUEUE, str(error))
        self._pending.pop(key, None)
        self._remember(key, report.status)
        return Decision(Action.ACK)

    def _remember(self, key: tuple[str, int], status: FileStatus) -> None:
        self._reported[key] = status
        while len(self._reported) > _REMEMBERED_FILES:
            self._reported.popitem(last=False)


def run_worker(
    config: WorkerConfig, settings: Settings, *, supervisor: Supervisor[FileJob, FileOutcome] | None = None
) -> int:
    """Consume the request's queue until SIGTERM (exit 0) or the broker is lost for good (exit 1)."""
    if config.result_destination is ResultDestination.VOLUME and not config.output_dir:
        log.error("request_id=%s --result-destination volume needs --output-dir", config.request_id)
        return 2
    if config.result_format not in RESULT_FORMATS:
        log.warning("request_id=%s --result-format %r is not one this transformer writes (%s); files "
                    "asking for it will fail", config.request_id, config.result_format,
                    ", ".join(RESULT_FORMATS))
    worker = settings.worker
    consumer = QueueConsumer(
        config.rabbit_uri, queue_name(config.request_id),
        heartbeat_s=worker.heartbeat_s, reconnect_attempts=worker.reconnect_attempts,
    )
    metrics = WorkerMetrics()
    if supervisor is None:
        supervisor = Supervisor(make_runner, CHILD_PRELOAD, recycle_after=worker.child_max_files)
    handler = FileHandler(config, settings, supervisor, metrics)
    state = consumer.state
    health = consumer_health(
        connected=lambda: state.connected, consuming=lambda: state.consuming,
        last_tick=lambda: state.last_tick, stale_after_s=max(120.0, 4.0 * worker.heartbeat_s),
    )
    probes = ProbeServer(metrics, health, worker.metrics_host, worker.metrics_port).start()
    log.info("request_id=%s worker up: queue %s, probes and metrics on %s:%d", config.request_id,
             consumer.queue, worker.metrics_host, probes.port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("request_id=%s %s received: finishing the current file, then stopping",
                 config.request_id, signal.Signals(signum).name)
        consumer.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor.start(f"request_id={config.request_id}")  # its imports overlap the broker connection
        consumer.run(handler)
    except ConsumerError as error:
        log.error("request_id=%s worker stops: %s", config.request_id, error)
        return 1
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        probes.stop()
        handler.close()
    log.info("request_id=%s worker stopped", config.request_id)
    return 0


def check_models(config: WorkerConfig, settings: Settings) -> str | None:
    """Check the spec's inference entries against the served models before consuming (DESIGN §5).

    Returns the reason to stop (a spec that does not fit its model, or inference without a Triton URL),
    or None. A server that is only unreachable is waited for briefly; its files then fail one by one.
    """
    from joiner.spec import parse_spec_text

    text, error = load_spec_text(config.spec_path)
    if error or not text:
        return None  # every file will fail with the spec's error; the worker keeps the queue
    spec = parse_spec_text(text)
    if not spec.inference:
        return None
    from transformer.inference import InferenceConfigError, ModelMismatchError, build_producers

    try:
        producers = build_producers(spec, settings.inference.triton_url, startup_deadline_s=60.0)
    except (ModelMismatchError, InferenceConfigError) as mismatch:
        return str(mismatch)
    for producer in producers:
        close = getattr(producer, "close", None)
        if callable(close):
            close()
    return None


def run_from_args(args: argparse.Namespace) -> int:
    """Entry of the `worker` subcommand, once `transformer.worker_start` has applied the facility settings
    shipped in the generated code and started the zygote (or the fork server)."""
    settings = get_settings()
    level: Any = logging.getLevelName(settings.log_level.upper())
    # LOG_LEVEL applies unless --log-level was given explicitly.
    if isinstance(level, int) and "log_level" in settings.model_fields_set and args.log_level == "INFO":
        logging.getLogger().setLevel(level)
    config = WorkerConfig(
        request_id=args.request_id,
        rabbit_uri=args.rabbit_uri,
        spec_path=str(Path(args.spec)),
        result_destination=ResultDestination(args.result_destination),
        result_format=args.result_format,
        output_dir=args.output_dir,
    )
    reason = check_models(config, settings)
    if reason is not None:
        log.error("request_id=%s the join spec does not fit the served model; stopping: %s",
                  config.request_id, reason)
        return 2
    return run_worker(config, settings)
