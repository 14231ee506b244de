"""Runs files' transforms in a long-lived child process, supervised, so that nothing one file does can stop
the consumer.

Owns the child-process boundary: one child per worker, forked from a process that has made the heavy
imports already (the worker's zygote, `transformer.zygote`, where the worker started one; else
multiprocessing's `forkserver`, which preloads them). The child builds its handler once (`factory()`) and
then serves requests one after another over a pipe, keeping whatever the handler holds in memory (loaded
key indexes, clients) between them. The guarantees of a process per file stay: a request past its
deadline kills the child (the next request starts a fresh one); a crash (out-of-memory kill, segfault,
`os._exit`, an exception escaping the handler) becomes `TransformCrashError` and the next request starts
a fresh child; the child is recycled (asked to exit, then replaced) after `recycle_after` requests. The
parent keeps serving its broker connection through `pump` while it waits. A child dies with its parent
(`PR_SET_PDEATHSIG`), so a killed worker leaves no orphan writing objects. Generic: it knows nothing of
queues, joins or storage.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from transformer.errors import FileDeadlineError, TransformCrashError
from transformer.zygote import ZygoteGoneError, die_with_parent, running_zygote

log = logging.getLogger(__name__)

A = TypeVar("A")
R = TypeVar("R")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s"
_STOP = None  # sent to the child: leave the request loop and exit


def _child_main(factory: Callable[[], Callable[[Any], Any]], log_level: int, connection: Any) -> None:
    die_with_parent()
    # The worker decides when a file stops: a SIGTERM/SIGINT meant for it must not cut a file short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # force: a child forked by the zygote has the worker's handler, whose lines do not name the pid
    logging.basicConfig(level=log_level, format=_LOG_FORMAT, force=True)
    handler = factory()
    try:
        while True:
            try:
                request = connection.recv()
            except EOFError:  # the parent went away or closed its end
                break
            if request is _STOP:
                break
            # An exception escaping the handler ends the process: its state may be broken, and the
            # parent reports it as a crash and starts a fresh child for the next request.
            connection.send(handler(request))
    finally:
        close = getattr(handler, "close", None)
        if callable(close):
            close()
        connection.close()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {code} without a result"


class _Child:
    """One running child: its process, its end of the pipe, and how many requests it has served."""

    def __init__(self, process: Any, connection: Any) -> None:
        self.process = process
        self.connection = connection
        self.served = 0

    def alive(self) -> bool:
        return bool(self.process.is_alive())

    def kill(self) -> int | None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        return self._close()

    def stop(self, timeout_s: float) -> int | None:
        """Ask the child to exit after its current request; kill it if it does not within `timeout_s`."""
        with contextlib.suppress(OSError, ValueError):  # already gone
            self.connection.send(_STOP)
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        return self._close()

    def _close(self) -> int | None:
        code: int | None = self.process.exitcode
        self.connection.close()
        self.process.close()
        return code


def start_fork_server(preload: Sequence[str]) -> None:
    """Start the `forkserver` now, importing `preload`, so that its imports overlap this process's own.

    A `Supervisor` using the `forkserver` then forks its children from this server (there is one per
    process); without this call the server starts with the first child.
    """
    import multiprocessing.forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(preload))
    multiprocessing.forkserver.ensure_running()


class Supervisor(Generic[A, R]):
    """Starts, feeds and watches the long-lived child process of one worker.

    Args:
        factory: a picklable top-level callable, run once in each new child, that returns the handler
            (`handler(argument) -> result`; it may keep state between requests and may have `close()`).
        preload: modules the fork server imports once (so that a new child starts warm); a zygote has
            imported its own list already.
        start_method: None (default): this process's zygote if it has one (`transformer.zygote`), else
            `forkserver`; or a multiprocessing start method (`forkserver`, `spawn`).
        recycle_after: requests one child serves before it is replaced (None: never).
    """

    def __init__(
        self,
        factory: Callable[[], Callable[[A], R]],
        preload: Sequence[str] = (),
        *,
        start_method: str | None = None,
        recycle_after: int | None = None,
    ) -> None:
        if recycle_after is not None and recycle_after < 1:
            raise ValueError(f"recycle_after must be at least 1, not {recycle_after}")
        self.factory = factory
        self.recycle_after = recycle_after
        self._zygote = running_zygote() if start_method is None else None
        self._context: Any = multiprocessing.get_context(start_method or "forkserver")
        if (start_method or "forkserver") == "forkserver" and preload:
            self._context.set_forkserver_preload(list(preload))
        self._child: _Child | None = None
        self.children_started = 0

    @property
    def child_pid(self) -> int | None:
        """The pid of the running child, if any (for logs and tests)."""
        return self._child.process.pid if self._child is not None else None

    @property
    def start_method(self) -> str:
        """How children start: `zygote`, or the multiprocessing start method."""
        return "zygote" if self._zygote is not None else str(self._context.get_start_method())

    def _start(self, label: str) -> _Child:
        level = logging.getLogger().getEffectiveLevel()
        process: Any = None
        if self._zygote is not None:
            try:
                process, parent_end = self._zygote.spawn(_child_main, (self.factory, level))
            except ZygoteGoneError as error:
                log.warning("%s %s; transform processes start from a forkserver from now on", label, error)
                self._zygote = None
        if process is None:
            parent_end, child_end = self._context.Pipe(duplex=True)
            process = self._context.Process(target=_child_main, args=(self.factory, level, child_end), daemon=False)
            process.start()
            child_end.close()
        self.children_started += 1
        log.info("%s transform process pid %s started from the %s (serves up to %s files)", label, process.pid,
                 self.start_method, self.recycle_after if self.recycle_after is not None else "any number of")
        return _Child(process, parent_end)

    def _ready_child(self, label: str) -> _Child:
        child = self._child
        if child is not None and not child.alive():
            pid = child.process.pid
            code = child.kill()
            log.warning("%s idle transform process pid %s %s; starting a fresh one", label, pid,
                        _describe_exit(code))
            child = None
        if child is None:
            child = self._start(label)
            self._child = child
        return child

    def start(self, label: str = "") -> None:
        """Start the child now (else the first request starts it), so that its start overlaps other work."""
        self._ready_child(label)

    def run(
        self,
        argument: A,
        *,
        deadline_s: float,
        pump: Callable[[float], None],
        label: str = "",
        poll_s: float = 0.2,
    ) -> R:
        """Have the child run `handler(argument)` and return its result.

        Args:
            argument: the handler's picklable argument.
            deadline_s: seconds after which the child is killed (and replaced for the next request).
            pump: called while waiting (`pump(0)`) so the caller's connection stays serviced.
            label: words for the log lines (request and file ids).
            poll_s: how often the wait wakes up.

        Raises:
            FileDeadlineError: the request ran past `deadline_s`; the child was killed.
            TransformCrashError: the child died without a result.
        """
        child = self._ready_child(label)
        started = time.monotonic()
        try:
            child.connection.send(argument)
        except (OSError, ValueError) as error:  # BrokenPipeError: it died between the check and the send
            code = child.kill()
            self._child = None
            raise TransformCrashError(f"the transform process {_describe_exit(code)} ({error})") from error
        connection, sentinel = child.connection, child.process.sentinel
        while True:
            ready = multiprocessing.connection.wait([connection, sentinel], timeout=poll_s)
            if connection in ready or (ready and connection.poll()):
                try:
                    result: R = connection.recv()
                except (EOFError, OSError):
                    break
                self._served(child, label)
                return result
            if ready:  # the process ended and left nothing in the pipe
                break
            if time.monotonic() - started > deadline_s:
                child.kill()
                self._child = None
                raise FileDeadlineError(
                    f"the transform ran past the per-file deadline of {deadline_s:g} s and was stopped"
                )
            pump(0)
        child.process.join(timeout=30)
        code = child.kill()
        self._child = None
        raise TransformCrashError(f"the transform process {_describe_exit(code)}")

    def _served(self, child: _Child, label: str) -> None:
        child.served += 1
        if self.recycle_after is not None and child.served >= self.recycle_after:
            pid = child.process.pid
            child.stop(timeout_s=30)
            self._child = None
            log.info("%s transform process pid %s recycled after %d files", label, pid, child.served)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the child (it finishes nothing: call between requests)."""
        if self._child is not None:
            self._child.stop(timeout_s)
            self._child = None
