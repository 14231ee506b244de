"""Shared pytest configuration: real data files and the local services the integration tests use.

Fixtures live in `tests/fixtures/<topic>.py`, one module per service or data source.
"""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.rabbitmq",
    "tests.fixtures.seaweedfs",
    "tests.fixtures.app_recorder",
    "tests.fixtures.data",
    "tests.fixtures.triton",
    "tests.fixtures.servicex_stack",
    "tests.fixtures.private_rabbitmq",
    "tests.fixtures.private_seaweedfs",
    "tests.fixtures.reliability",
    "tests.fixtures.http_files",
]
