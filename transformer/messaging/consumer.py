"""The pika consumer of one request's queue `transformer-<request_id>`.

Owns the AMQP side of the worker: connecting (with bounded reconnects when the broker restarts),
declaring the queue exactly as the ServiceX App does (non-durable, auto-delete, no arguments: RabbitMQ
refuses a re-declaration with other arguments), prefetch 1, handing each delivery to a handler, and
acknowledging from the connection's own thread. While the handler runs, it gets a `pump` that keeps the
connection serviced (heartbeats), so a long file never costs the connection. It knows nothing of tasks,
joins, storage or the App: the handler returns a `Decision`.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pika
import pika.exceptions

log = logging.getLogger(__name__)

# What the App's Celery router declares (kombu Queue(durable=False, auto_delete=True), no arguments).
QUEUE_DURABLE = False
QUEUE_AUTO_DELETE = True


class Action(enum.Enum):
    """What to do with a delivery once its handler returns."""

    ACK = "ack"
    REJECT = "reject"  # drop (not a valid task): never requeued
    REQUEUE = "requeue"  # nack with requeue: another try later, here or on another worker


@dataclass(frozen=True)
class Decision:
    """A handler's verdict on one delivery."""

    action: Action
    reason: str = ""


@dataclass(frozen=True)
class Delivery:
    """One AMQP delivery, as plain values."""

    delivery_tag: int
    redelivered: bool
    body: bytes
    headers: Mapping[str, Any]
    content_type: str | None
    content_encoding: str | None


class Pump(Protocol):
    """Wait up to `seconds` while the broker connection is serviced (0: service it once, return)."""

    def __call__(self, seconds: float) -> None: ...


Handler = Callable[[Delivery, Pump], Decision]


@dataclass
class ConsumerState:
    """What probes and metrics read about the consumer (updated from its thread only)."""

    connected: bool = False
    consuming: bool = False
    last_tick: float = field(default_factory=time.monotonic)
    deliveries: int = 0
    reconnects: int = 0


class ConsumerError(RuntimeError):
    """The consumer cannot go on (broker unreachable past the reconnect budget, queue refused)."""


class QueueConsumer:
    """Consumes one queue, one message at a time, until `stop()` is called.

    Args:
        url: AMQP URL (`amqp://user:pass@host:5672/%2F`).
        queue: the queue name.
        heartbeat_s: AMQP heartbeat the consumer asks for (0: none).
        reconnect_attempts: consecutive failed connection attempts before giving up.
        reconnect_backoff_s: first wait between attempts (doubles, at most 30 s).
        idle_poll_s: how often an idle consumer checks for `stop()`.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        heartbeat_s: int = 60,
        reconnect_attempts: int = 30,
        reconnect_backoff_s: float = 1.0,
        idle_poll_s: float = 0.5,
    ) -> None:
        self.url = url
        self.queue = queue
        self.heartbeat_s = heartbeat_s
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_backoff_s = reconnect_backoff_s
        self.idle_poll_s = idle_poll_s
        self.state = ConsumerState()
        self._stop = threading.Event()
        self._connection: pika.BlockingConnection | None = None

    def stop(self) -> None:
        """Ask the consumer to stop after the current delivery (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called."""
        return self._stop.is_set()

    def run(self, handler: Handler) -> None:
        """Consume until `stop()`; reconnect when the connection is lost.

        Raises:
            ConsumerError: the broker stayed unreachable for `reconnect_attempts` tries, or refused the
                queue declaration.
        """
        failures = 0
        delay = self.reconnect_backoff_s
        while not self._stop.is_set():
            try:
                self._connect()
                failures, delay = 0, self.reconnect_backoff_s
                self._consume(handler)
            except pika.exceptions.ChannelClosedByBroker as error:
                self._close()
                if error.reply_code == 406:  # PRECONDITION_FAILED: the queue exists with other arguments
                    raise ConsumerError(
                        f"RabbitMQ refused queue {self.queue!r}: {error.reply_text} (it was declared with "
                        f"other arguments than durable={QUEUE_DURABLE}, auto_delete={QUEUE_AUTO_DELETE})"
                    ) from error
                log.warning("queue=%s channel closed by broker (%s), reconnecting", self.queue, error)
            except pika.exceptions.AMQPError as error:
                self._close()
                if self._stop.is_set():
                    break
                failures += 1
                self.state.reconnects += 1
                if failures >= self.reconnect_attempts:
                    raise ConsumerError(
                        f"cannot reach RabbitMQ for queue {self.queue!r} after {failures} tries: {error!r}"
                    ) from error
                log.warning(
                    "queue=%s broker connection lost or refused (%r); retry %d/%d in %.1f s",
                    self.queue, error, failures, self.reconnect_attempts, delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
        self._close()

    def _connect(self) -> None:
        params = pika.URLParameters(self.url)
        params.heartbeat = self.heartbeat_s
        params.blocked_connection_timeout = 300
        params.connection_attempts = 1
        params.client_properties = {"connection_name": f"servicex-joiner {self.queue}"}
        self._connection = pika.BlockingConnection(params)
        self.state.connected = True
        log.info("queue=%s connected to RabbitMQ", self.queue)

    def _close(self) -> None:
        self.state.connected = False
        self.state.consuming = False
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except pika.exceptions.AMQPError as error:
                log.debug("queue=%s error while closing: %r", self.queue, error)

    def _consume(self, handler: Handler) -> None:
        connection = self._connection
        if connection is None:
            raise ConsumerError("not connected")
        channel = connection.channel()
        channel.queue_declare(queue=self.queue, durable=QUEUE_DURABLE, auto_delete=QUEUE_AUTO_DELETE)
        channel.basic_qos(prefetch_count=1)
        self.state.consuming = True
        log.info("queue=%s consuming (prefetch 1)", self.queue)

        lost: list[pika.exceptions.AMQPError] = []

        def pump(seconds: float) -> None:
            # Serve the connection (heartbeats) while the handler waits. A connection lost meanwhile does
            # not interrupt the handler: its file is finished, and the delivery is redelivered later.
            self.state.last_tick = time.monotonic()
            if lost:
                time.sleep(max(seconds, 0.0))
                return
            try:
                if seconds <= 0:
                    connection.process_data_events(time_limit=0)
                else:
                    connection.sleep(seconds)
            except pika.exceptions.AMQPError as error:
                log.warning("queue=%s connection lost while a file was in progress: %r", self.queue, error)
                lost.append(error)
            self.state.last_tick = time.monotonic()

        for method, properties, body in channel.consume(self.queue, inactivity_timeout=self.idle_poll_s):
            self.state.last_tick = time.monotonic()
            if method is None:
                if self._stop.is_set():
                    break
                continue
            self.state.deliveries += 1
            delivery = Delivery(
                delivery_tag=method.delivery_tag,
                redelivered=bool(method.redelivered),
                body=bytes(body),
                headers=dict(properties.headers or {}),
                content_type=properties.content_type,
                content_encoding=properties.content_encoding,
            )
            decision = handler(delivery, pump)
            if lost:
                raise pika.exceptions.AMQPConnectionError(
                    f"connection lost during delivery {delivery.delivery_tag}: {lost[0]!r}"
                )
            if decision.action is Action.ACK:
                channel.basic_ack(delivery.delivery_tag)
            elif decision.action is Action.REJECT:
                channel.basic_reject(delivery.delivery_tag, requeue=False)
            else:
                channel.basic_nack(delivery.delivery_tag, requeue=True)
            if self._stop.is_set():
                break
        self.state.consuming = False
        try:
            channel.cancel()
        except pika.exceptions.AMQPError as error:
            log.debug("queue=%s cancel failed: %r", self.queue, error)
