"""The transform-process supervisor: one long-lived child that keeps state across requests, and the
guarantees of a process per file kept: crashes, deadlines, an idle child that died, recycling, the pump.

Every case runs twice: with children from multiprocessing's forkserver (in this process), and with
children from a zygote (`transformer.zygote`), in a fresh pytest process started by
`test_the_same_cases_hold_with_children_from_a_zygote`: a zygote may only be forked before any thread
starts, and a test session's fixtures start threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability_support import wait_for
from transformer.errors import FileDeadlineError, TransformCrashError
from transformer.supervise import Supervisor
from transformer.zygote import running_zygote, start_zygote

REPO = Path(__file__).resolve().parents[1]
_START_METHOD = os.environ.get("JOINER_TEST_START_METHOD", "forkserver")  # "zygote" in the fresh process


class _Handler:
    """Counts the requests this process served; commands make it crash or hang."""

    def __init__(self) -> None:
        self.served = 0

    def __call__(self, request: tuple[str, Any]) -> tuple[int, int, Any]:
        command, value = request
        self.served += 1
        if command == "square":
            return os.getpid(), self.served, value * value
        if command == "sleep":
            time.sleep(value)
            return os.getpid(), self.served, None
        if command == "exit":
            os._exit(value)
        if command == "raise":
            raise RuntimeError("handler bug")
        os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid(), self.served, None


def _no_pump(seconds: float) -> None:
    return None


def _supervisor(recycle_after: int | None = None) -> Supervisor[tuple[str, Any], tuple[int, int, Any]]:
    """A supervisor whose children start as this run wants (see the module docstring)."""
    if _START_METHOD == "zygote":
        assert start_zygote(["tests.test_worker_supervise"]) is not None, "a thread runs: no zygote"
        sup: Supervisor[tuple[str, Any], tuple[int, int, Any]] = Supervisor(_Handler, recycle_after=recycle_after)
    else:
        sup = Supervisor(_Handler, ["tests.test_worker_supervise"], start_method="forkserver",
                         recycle_after=recycle_after)
    assert sup.start_method == _START_METHOD
    return sup


@pytest.fixture
def supervisor() -> Iterator[Supervisor[tuple[str, Any], tuple[int, int, Any]]]:
    sup = _supervisor()
    yield sup
    sup.close()


def test_one_child_serves_requests_and_keeps_state(supervisor: Supervisor[Any, Any]) -> None:
    pumps: list[float] = []
    results = [supervisor.run(("square", n), deadline_s=30, pump=pumps.append) for n in (2, 3, 4)]
    assert [r[2] for r in results] == [4, 9, 16]
    assert [r[1] for r in results] == [1, 2, 3]  # the same handler object served all three
    assert len({r[0] for r in results}) == 1 and results[0][0] != os.getpid()
    supervisor.run(("sleep", 0.6), deadline_s=30, pump=pumps.append, poll_s=0.1)
    assert len(pumps) >= 3 and set(pumps) == {0}
    assert supervisor.children_started == 1


def test_crashes_become_errors_and_a_fresh_child_follows(supervisor: Supervisor[Any, Any]) -> None:
    first = supervisor.run(("square", 1), deadline_s=30, pump=_no_pump)
    with pytest.raises(TransformCrashError, match="SIGKILL"):
        supervisor.run(("kill", None), deadline_s=30, pump=_no_pump)
    with pytest.raises(TransformCrashError, match="code 3"):
        supervisor.run(("exit", 3), deadline_s=30, pump=_no_pump)
    with pytest.raises(TransformCrashError, match="code 1"):
        supervisor.run(("raise", None), deadline_s=30, pump=_no_pump)
    after = supervisor.run(("square", 5), deadline_s=30, pump=_no_pump)
    assert after[2] == 25 and after[1] == 1 and after[0] != first[0]
    assert supervisor.children_started == 4  # the first, then one after each of the three crashes


def test_deadline_kills_the_child_and_the_next_request_gets_a_fresh_one(supervisor: Supervisor[Any, Any]) -> None:
    before = supervisor.run(("square", 1), deadline_s=30, pump=_no_pump)
    started = time.monotonic()
    with pytest.raises(FileDeadlineError, match=r"deadline of 0\.5 s"):
        supervisor.run(("sleep", 60), deadline_s=0.5, pump=_no_pump, poll_s=0.05)
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(before[0], 0)
    after = supervisor.run(("square", 2), deadline_s=30, pump=_no_pump)
    assert after[0] != before[0] and after[1] == 1


def test_an_idle_child_that_died_is_replaced(supervisor: Supervisor[Any, Any]) -> None:
    pid = supervisor.run(("square", 1), deadline_s=30, pump=_no_pump)[0]
    os.kill(pid, signal.SIGKILL)  # the OOM killer picks the idle child
    time.sleep(0.2)
    again = supervisor.run(("square", 3), deadline_s=30, pump=_no_pump)
    assert again[2] == 9 and again[0] != pid


def test_recycled_after_n_requests() -> None:
    supervisor = _supervisor(recycle_after=2)
    try:
        pids = [supervisor.run(("square", n), deadline_s=30, pump=_no_pump)[0] for n in range(5)]
    finally:
        supervisor.close()
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert supervisor.children_started == 3
    with pytest.raises(ValueError, match="at least 1"):
        Supervisor(_Handler, recycle_after=0)


def test_children_of_a_zygote_die_with_it_and_the_supervisor_goes_on_from_a_forkserver() -> None:
    if _START_METHOD != "zygote":
        pytest.skip("runs in the zygote run (see the module docstring)")
    supervisor = _supervisor()
    try:
        child = supervisor.run(("square", 1), deadline_s=30, pump=_no_pump)[0]
        zygote = running_zygote()
        assert zygote is not None
        os.kill(zygote.pid, signal.SIGKILL)
        os.waitpid(zygote.pid, 0)
        wait_for(lambda: not _alive(child), 10, "the zygote's child killed with it (PR_SET_PDEATHSIG)")
        again = supervisor.run(("square", 4), deadline_s=30, pump=_no_pump)
        assert again[2] == 16 and again[0] != child
        assert supervisor.start_method == "forkserver"
    finally:
        supervisor.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_same_cases_hold_with_children_from_a_zygote() -> None:
    if _START_METHOD == "zygote":
        pytest.skip("this is the zygote run")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
        cwd=REPO, env={**os.environ, "JOINER_TEST_START_METHOD": "zygote"}, capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "6 passed, 1 skipped" in run.stdout, run.stdout[-2000:]
