"""Messaging: the Celery protocol-2 codec and the pika consumer of a request's queue.

Knows RabbitMQ and Celery framing only; never imports reading, joining, inference or storage.
"""
