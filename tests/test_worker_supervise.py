"""The child-process supervisor: results, crashes, deadlines, and the pump kept running."""

from __future__ import annotations

import os
import signal
import time

import pytest

from transformer.errors import FileDeadlineError, TransformCrashError
from transformer.supervise import Supervisor


def _square(value: int) -> int:
    return value * value


def _crash(how: str) -> int:
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


def _hang(seconds: float) -> int:
    time.sleep(seconds)
    return 1


@pytest.fixture(scope="module")
def supervisor() -> Supervisor:
    return Supervisor(["tests.test_worker_supervise"])


def test_result_and_pump(supervisor: Supervisor) -> None:
    pumps: list[float] = []
    assert supervisor.run(_square, 12, deadline_s=30, pump=pumps.append) == 144
    supervisor.run(_hang, 0.6, deadline_s=30, pump=pumps.append, poll_s=0.1)
    assert len(pumps) >= 3 and set(pumps) == {0}


def test_crashes_become_errors(supervisor: Supervisor) -> None:
    with pytest.raises(TransformCrashError, match="SIGKILL"):
        supervisor.run(_crash, "kill", deadline_s=30, pump=lambda s: None)
    with pytest.raises(TransformCrashError, match="code 3"):
        supervisor.run(_crash, "exit", deadline_s=30, pump=lambda s: None)


def test_deadline_kills_the_child(supervisor: Supervisor) -> None:
    started = time.monotonic()
    with pytest.raises(FileDeadlineError, match=r"deadline of 0\.5 s"):
        supervisor.run(_hang, 60, deadline_s=0.5, pump=lambda s: None, poll_s=0.05)
    assert time.monotonic() - started < 5
