"""Runs one file's transform in a child process, supervised, so that nothing it does can stop the consumer.

Owns the child-process boundary: a fresh process per file from a `forkserver` (the heavy imports are
preloaded there once, so a child starts in milliseconds), a pipe for the result, a deadline enforced by
killing the child, and a crash (out-of-memory kill, segfault, `os._exit`) turned into
`TransformCrashError`. The parent keeps serving its broker connection through `pump` while it waits. A
child dies with its parent (`PR_SET_PDEATHSIG`), so a killed worker leaves no orphan writing objects.
Generic: it runs any picklable top-level function; it knows nothing of queues, joins or storage.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from transformer.errors import FileDeadlineError, TransformCrashError

log = logging.getLogger(__name__)

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s"


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the deadline still bounds an orphan's life
        return


def _child_main(target: Callable[[Any], Any], argument: Any, writer: Any, log_level: int) -> None:
    _die_with_parent()
    # The worker decides when a file stops: a SIGTERM/SIGINT meant for it must not cut a file short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=_LOG_FORMAT)
    result = target(argument)
    writer.send(result)
    writer.close()


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


class Supervisor:
    """Starts and watches child processes.

    Args:
        preload: modules the fork server imports once (so that children start warm).
        start_method: `forkserver` (default) or `spawn`.
    """

    def __init__(self, preload: Sequence[str] = (), *, start_method: str = "forkserver") -> None:
        self._context: Any = multiprocessing.get_context(start_method)
        if start_method == "forkserver" and preload:
            self._context.set_forkserver_preload(list(preload))

    def run(
        self,
        target: Callable[[Any], T],
        argument: Any,
        *,
        deadline_s: float,
        pump: Callable[[float], None],
        label: str = "",
        poll_s: float = 0.2,
    ) -> T:
        """Run `target(argument)` in a child process and return its result.

        Args:
            target: a picklable top-level function.
            argument: its picklable argument.
            deadline_s: seconds after which the child is killed.
            pump: called while waiting (`pump(0)`) so the caller's connection stays serviced.
            label: words for the log lines (request and file ids).
            poll_s: how often the wait wakes up.

        Raises:
            FileDeadlineError: the child ran past `deadline_s` and was killed.
            TransformCrashError: the child died without a result.
        """
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child_main,
            args=(target, argument, writer, logging.getLogger().getEffectiveLevel()),
            daemon=False,
        )
        started = time.monotonic()
        process.start()
        writer.close()
        log.debug("%s child pid %s started", label, process.pid)
        result: Any = None
        received = False
        try:
            while True:
                ready = multiprocessing.connection.wait([reader, process.sentinel], timeout=poll_s)
                if reader in ready or (ready and reader.poll()):
                    try:
                        result = reader.recv()
                        received = True
                    except EOFError:
                        pass
                    break
                if ready:  # the process ended and left nothing in the pipe
                    break
                if time.monotonic() - started > deadline_s:
                    process.kill()
                    process.join()
                    raise FileDeadlineError(
                        f"the transform ran past the per-file deadline of {deadline_s:g} s and was stopped"
                    )
                pump(0)
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        finally:
            reader.close()
            if process.is_alive():
                process.kill()
                process.join()
            exitcode = process.exitcode
            process.close()
        if not received:
            raise TransformCrashError(f"the transform process {_describe_exit(exitcode)}")
        typed: T = result
        return typed
