"""The worker's own fork server: a copy of the worker process, made before it starts any thread, that imports
the engine once and forks every transform process from there.

Why not multiprocessing's `forkserver`: that server is a fresh interpreter. It imports again what the worker
has already imported (pydantic and the spec and settings models, urllib3, yaml: nearly all of the consumer's
own imports), and it brings a resource tracker process along. Forked from the worker once those are
imported, the zygote has them already; only the engine's own imports (numpy, pyarrow, awkward, uproot,
minio) are left to it, and they run while the worker connects to the broker. A worker's start-up (all its
processes, up to the transform process waiting for its first file) went from 1.91 to 1.47 CPU-s
(`benchmarks/bench_worker_start.py`). On a one-CPU pod the first file starts that much sooner; workers
that share a node's cores leave the difference to the files.

The fork is safe only while the worker has a single thread (a lock held by another thread at that moment
would stay locked in the copy): `start_zygote` refuses otherwise, and the supervisor then uses
multiprocessing's `forkserver`.

Protocol, over one Unix socket pair: the worker sends a pickled `(target, args)`; the zygote forks, and
the new process runs `target(*args, connection)` with its end of a fresh socket pair and exits. The zygote
answers with the new process's pid and two descriptors (`socket.send_fds`): the worker's end of that
socket pair, and the read end of a status pipe on which the zygote writes the exit code (negative: killed
by that signal) once it has reaped the process. The zygote dies with the worker (`PR_SET_PDEATHSIG`), and
a transform process with the zygote, so nothing outlives a killed worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, NoReturn

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!Q")  # a request's length
_PID = struct.Struct("!q")  # the zygote's answer: the new process's pid (-1: the fork failed)
_STATUS = struct.Struct("!i")  # on a status pipe: the exit code
_KILLED_WITH_ZYGOTE = -signal.SIGKILL  # a status pipe closed without a code: the zygote died, and its children
_PR_SET_PDEATHSIG = 1
_running: list[Zygote] = []  # the zygote this process forked (at most one)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux), so that no orphan goes on."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a supervisor's deadline still bounds an orphan's life
        return


class ZygoteGoneError(RuntimeError):
    """The zygote no longer answers (it died): start processes another way."""


class ZygoteProcess:
    """A process forked by the zygote, seen from the worker: what `multiprocessing.Process` offers a
    supervisor (`pid`, `sentinel`, `is_alive`, `kill`, `join`, `exitcode`, `close`).

    The worker is not its parent, so it cannot `waitpid` it: the exit code arrives on `sentinel`, the
    status pipe the zygote writes once it has reaped the process.
    """

    def __init__(self, pid: int, sentinel: int) -> None:
        self.pid = pid
        self.sentinel = sentinel
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        return not self._collect(0.0)

    def kill(self) -> None:
        if self.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def join(self, timeout: float | None = None) -> None:
        self._collect(timeout)

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1

    def _collect(self, timeout: float | None) -> bool:
        """Whether the process has ended, waiting up to `timeout` seconds (None: until it has)."""
        if self.exitcode is not None:
            return True
        if self.sentinel < 0:
            raise ValueError("the process handle is closed")
        ready, _, _ = select.select([self.sentinel], [], [], timeout)
        if not ready:
            return False
        data = os.read(self.sentinel, _STATUS.size)
        self.exitcode = _STATUS.unpack(data)[0] if len(data) == _STATUS.size else _KILLED_WITH_ZYGOTE
        return True


class Zygote:
    """The worker's handle on its zygote: `spawn` asks it for a new process."""

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self._control = control
        self._lock = threading.Lock()

    def spawn(self, target: Callable[..., Any], args: Sequence[Any]) -> tuple[ZygoteProcess, Connection]:
        """Fork a process that runs `target(*args, connection)`; return it and the worker's end of `connection`.

        Raises:
            ZygoteGoneError: the zygote died or could not fork.
        """
        request = pickle.dumps((target, tuple(args)))
        with self._lock:
            try:
                self._control.sendall(_LENGTH.pack(len(request)) + request)
                message, fds, _, _ = socket.recv_fds(self._control, _PID.size, 2)
            except OSError as error:
                raise ZygoteGoneError(f"the zygote (pid {self.pid}) does not answer: {error}") from error
        if len(message) != _PID.size or _PID.unpack(message)[0] < 0 or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise ZygoteGoneError(f"the zygote (pid {self.pid}) could not start a process")
        connection_fd, status_fd = fds
        return ZygoteProcess(_PID.unpack(message)[0], status_fd), Connection(connection_fd)


def start_zygote(preload: Sequence[str]) -> Zygote | None:
    """Fork this process's zygote, which imports `preload` and then serves `spawn` requests.

    Call it before any thread starts; with other threads running it forks nothing and returns None (the
    supervisor then uses multiprocessing's `forkserver`). Not on Linux: None too.
    """
    if _running:
        return _running[0]
    if threading.active_count() > 1 or not hasattr(socket, "send_fds") or sys.platform != "linux":
        return None
    worker_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the zygote
        worker_end.close()
        _run_then_exit(lambda: _serve(zygote_end, preload))
    zygote_end.close()
    _running.append(Zygote(pid, worker_end))
    return _running[0]


def running_zygote() -> Zygote | None:
    """The zygote `start_zygote` forked in this process, if any."""
    return _running[0] if _running else None


def _serve(control: socket.socket, preload: Sequence[str]) -> None:
    """The zygote's life: import, then fork on request and report exit codes, until the worker goes."""
    die_with_parent()
    # The worker decides when its processes stop: a SIGTERM/SIGINT sent to the whole process group (a
    # terminal's Ctrl-C) must not take the zygote along.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError as error:  # the transform process reports what it cannot import
            log.warning("zygote: cannot preload %s: %s", name, error)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so that SIGCHLD wakes the loop
    signal.set_wakeup_fd(wake_write)
    status_pipes: dict[int, int] = {}  # pid -> write end of its status pipe
    try:
        while True:
            ready, _, _ = select.select([control.fileno(), wake_read], [], [])
            if wake_read in ready:
                os.read(wake_read, 4096)
                _reap(status_pipes)
            if control.fileno() in ready:
                request = _receive(control)
                if request is None:  # the worker closed its end or died
                    return
                _fork_one(control, request, status_pipes, (wake_read, wake_write))
    finally:
        _reap(status_pipes)


def _receive(control: socket.socket) -> tuple[Callable[..., Any], tuple[Any, ...]] | None:
    header = _read_exactly(control, _LENGTH.size)
    if header is None:
        return None
    body = _read_exactly(control, _LENGTH.unpack(header)[0])
    if body is None:
        return None
    target, args = pickle.loads(body)
    return target, args


def _read_exactly(control: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = control.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _fork_one(
    control: socket.socket,
    request: tuple[Callable[..., Any], tuple[Any, ...]],
    status_pipes: dict[int, int],
    wake: tuple[int, int],
) -> None:
    """Fork one process for `request` and hand the worker its connection and status pipe."""
    worker_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    status_read, status_write = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for end in (worker_end, child_end):
            end.close()
        for fd in (status_read, status_write):
            os.close(fd)
        control.sendall(_PID.pack(-1))
        return
    if pid == 0:  # the new process: nothing of the zygote's bookkeeping stays open in it
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (*wake, status_read, status_write, *status_pipes.values()):
            os.close(fd)
        control.close()
        worker_end.close()
        target, args = request
        connection = Connection(child_end.detach())
        _run_then_exit(lambda: target(*args, connection))
    child_end.close()
    status_pipes[pid] = status_write
    try:
        socket.send_fds(control, [_PID.pack(pid)], [worker_end.fileno(), status_read])
    finally:
        worker_end.close()
        os.close(status_read)


def _run_then_exit(run: Callable[[], object]) -> NoReturn:
    """Run a forked process's work, then leave through `os._exit`: nothing inherited from the parent (its
    atexit handlers, a test session's finalizers) runs a second time. An exception is printed on stderr
    and the exit code says so."""
    code = 0
    try:
        run()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported on stderr, then the exit code says it failed
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(status_pipes: dict[int, int]) -> None:
    """Collect every ended child and write its exit code to its status pipe."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        write_end = status_pipes.pop(pid, None)
        if write_end is None:
            continue
        with contextlib.suppress(OSError):  # the worker closed its handle already
            os.write(write_end, _STATUS.pack(os.waitstatus_to_exitcode(status)))
        os.close(write_end)
