"""The pika consumer against real RabbitMQ, with tasks published by real Celery as the App does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pika
import pytest

from tests.fixtures.rabbitmq import AppPublisher, queue_message_count
from transformer.errors import InvalidMessageError
from transformer.messaging.codec import decode_task
from transformer.messaging.consumer import Action, ConsumerError, Decision, Delivery, Pump, QueueConsumer
from transformer.models import TransformTask, queue_name

pytestmark = pytest.mark.integration


class Recorder:
    """A handler that decodes and acks, recording what it saw; stops the consumer after `stop_after`."""

    def __init__(self, consumer: QueueConsumer, stop_after: int) -> None:
        self.consumer = consumer
        self.stop_after = stop_after
        self.tasks: list[TransformTask] = []
        self.rejected: list[str] = []
        self.seen = 0

    def __call__(self, delivery: Delivery, pump: Pump) -> Decision:
        pump(0)
        self.seen += 1
        if self.seen >= self.stop_after:
            self.consumer.stop()
        try:
            task = decode_task(delivery.body, delivery.headers, content_type=delivery.content_type,
                               content_encoding=delivery.content_encoding).task
        except InvalidMessageError as error:
            self.rejected.append(str(error))
            return Decision(Action.REJECT)
        self.tasks.append(task)
        return Decision(Action.ACK)


def _run(consumer: QueueConsumer, handler: Callable[[Delivery, Pump], Decision]) -> threading.Thread:
    thread = threading.Thread(target=consumer.run, args=(handler,), daemon=True)
    thread.start()
    return thread


def _publish(app_publisher: AppPublisher, request_id: str, n: int) -> None:
    for file_id in range(1, n + 1):
        app_publisher.send_file(request_id, file_id, [f"root://eos//f{file_id}.root"],
                                f"http://app/servicex/internal/transformation/{request_id}")


def test_app_declares_first(rabbitmq_url: str, request_id: str, app_publisher: AppPublisher) -> None:
    _publish(app_publisher, request_id, 3)
    assert queue_message_count(rabbitmq_url, queue_name(request_id)) == 3
    consumer = QueueConsumer(rabbitmq_url, queue_name(request_id), idle_poll_s=0.1)
    recorder = Recorder(consumer, 3)
    _run(consumer, recorder).join(30)
    assert [t.file_id for t in recorder.tasks] == [1, 2, 3]
    assert recorder.tasks[0].paths == ["root://eos//f1.root"]
    assert recorder.tasks[0].request_id == request_id


def test_worker_declares_first(rabbitmq_url: str, request_id: str, app_publisher: AppPublisher) -> None:
    consumer = QueueConsumer(rabbitmq_url, queue_name(request_id), idle_poll_s=0.1)
    recorder = Recorder(consumer, 2)
    thread = _run(consumer, recorder)
    deadline = time.monotonic() + 10
    while not consumer.state.consuming and time.monotonic() < deadline:
        time.sleep(0.05)
    _publish(app_publisher, request_id, 2)  # Celery re-declares the queue: same arguments, accepted
    thread.join(30)
    assert [t.file_id for t in recorder.tasks] == [1, 2]


def test_other_arguments_are_refused(rabbitmq_url: str, request_id: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    connection.channel().queue_declare(queue_name(request_id), durable=True, auto_delete=False)
    connection.close()
    consumer = QueueConsumer(rabbitmq_url, queue_name(request_id))
    with pytest.raises(ConsumerError, match="PRECONDITION_FAILED"):
        consumer.run(lambda d, p: Decision(Action.ACK))


def test_invalid_message_rejected_and_consumer_goes_on(
    rabbitmq_url: str, request_id: str, app_publisher: AppPublisher
) -> None:
    _publish(app_publisher, request_id, 1)
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    channel = connection.channel()
    channel.basic_publish("", queue_name(request_id), b"this is not a task",
                          pika.BasicProperties(content_type="text/plain"))
    connection.close()
    _publish(app_publisher, request_id, 1)
    consumer = QueueConsumer(rabbitmq_url, queue_name(request_id), idle_poll_s=0.1)
    recorder = Recorder(consumer, 3)
    _run(consumer, recorder).join(30)
    assert len(recorder.tasks) == 2 and len(recorder.rejected) == 1
    assert "no 'task' header" in recorder.rejected[0]
    assert queue_message_count(rabbitmq_url, queue_name(request_id)) in (0, None)  # not requeued
