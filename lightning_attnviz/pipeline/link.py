"""One connection to the drawing side: a forked or spawned child process, or a thread in this one.

The training thread only enqueues: a sender thread writes length-prefixed pickles to the child, a
reader thread reads its answers and hands each to ``deliver``. When the child ends (killed, crashed,
or ended by us), the reader sees the end of its pipe, sets :attr:`Link.ended` and calls ``on_end``.
Which connection to make, and what to do when one ends, is :mod:`lightning_attnviz.pipeline.worker`'s.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from lightning_attnviz.pipeline.child import Serve, receive, send
from lightning_attnviz.pipeline.messages import Done, Draw

How = Literal["fork", "spawn", "thread"]


class Link:
    """A drawing process (or thread) and the two threads that talk to it.

    Args:
        how: ``"fork"`` (Linux: no second import of torch), ``"spawn"``, or ``"thread"``.
        deliver: called on the reader thread with every answer, in order.
        on_end: called on the reader thread once the child has ended.

    Raises:
        OSError: the process could not be started (the caller falls back to a thread).
    """

    def __init__(self, how: How, deliver: Callable[[Any], None], on_end: Callable[[], None]) -> None:
        self.how, self.deliver, self.on_end = how, deliver, on_end
        self.outbox: queue.Queue[Any] = queue.Queue()
        self.ended = threading.Event()
        self.exit_code: int | None = None
        self.pid: int | None = None
        self._parent = os.getpid()
        self._proc: subprocess.Popen | _Forked | None = None
        if how == "thread":
            self._start_thread()
        else:
            self._start_fork() if how == "fork" else self._start_spawn()

    # -- starting -----------------------------------------------------------------------------------

    def _start_spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        code = f"from lightning_attnviz.pipeline.child import child_main; child_main({write_fd})"
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(write_fd,),
                start_new_session=True,  # no terminal signals: Ctrl-C is handled by draining
                env=env,
            )
        finally:
            os.close(write_fd)
        self.pid = self._proc.pid
        self._threads(self._proc.stdin, os.fdopen(read_fd, "rb"))

    def _start_fork(self) -> None:
        """Fork the drawing process from this one: no second import of torch (~1.5 s of CPU a spawned
        process spends before its first picture). Everything it runs is imported first, so no import
        lock can be held by another thread at the fork, and it never touches CUDA or the parent's
        objects; it only reads jobs and writes files and answers."""
        from lightning_attnviz.pipeline.child import forked_main

        job_r, job_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(job_w)
            os.close(result_r)
            forked_main(job_r, result_w)
        os.close(job_r)
        os.close(result_w)
        self.pid = pid
        self._proc = _Forked(pid)
        self._threads(os.fdopen(job_w, "wb"), os.fdopen(result_r, "rb"))

    def _threads(self, stdin: Any, results: Any) -> None:
        threading.Thread(target=self._send_loop, args=(stdin,), name="attnviz-send", daemon=True).start()
        threading.Thread(target=self._read_loop, args=(results,), name="attnviz-read", daemon=True).start()

    def _start_thread(self) -> None:
        serve = Serve(self.deliver, lower=False)  # never below training: it *is* the training process
        threading.Thread(target=serve.work, name="attnviz-draw", daemon=True).start()

        def accept() -> None:
            while (message := self.outbox.get()) is not None:
                serve.accept(message)
            serve.finish()

        threading.Thread(target=accept, name="attnviz-accept", daemon=True).start()

    # -- public -------------------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        self.outbox.put(message)

    def alive(self) -> bool:
        if os.getpid() != self._parent or self.ended.is_set():
            return False
        return self._proc is None or self._proc.poll() is None

    def kill(self) -> None:
        """End the drawing process now (it may be stopped or stuck); a thread cannot be ended."""
        if self._proc is not None and os.getpid() == self._parent:
            with contextlib.suppress(OSError):
                self._proc.kill()

    def stopped(self) -> bool:
        """Whether the process is stopped by a signal (SIGSTOP, SIGTSTP): Linux's /proc tells."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0] in ("T", "t")
        except (OSError, IndexError, TypeError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """End the child at interpreter exit: it exits when its input ends."""
        self.outbox.put(None)
        if self._proc is not None and os.getpid() == self._parent:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.kill()

    # -- threads --------------------------------------------------------------------------------------

    def _send_loop(self, stdin: Any) -> None:
        while True:
            message = self.outbox.get()
            try:
                if message is None:
                    stdin.close()
                    return
                send(stdin, message)
            except (OSError, ValueError, pickle.PicklingError, TypeError, AttributeError) as err:
                if isinstance(message, Draw) and not isinstance(err, OSError):
                    text = f"AttentionMonitor: a capture could not be sent for drawing ({err}); lost."
                    self.deliver(Done(message.channel, message.job_id, None, (text,), 0.0, None))
                if isinstance(err, OSError):
                    return

    def _read_loop(self, results: Any) -> None:
        while True:
            try:
                message = receive(results)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            self.deliver(message)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.exit_code = self._proc.wait(timeout=5)
        self.ended.set()
        self.on_end()


class _Forked:
    """The forked child seen through the parts of ``subprocess.Popen`` a link uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._code: int | None = None
        self._lock = threading.Lock()  # two threads poll: the one that reaps it keeps the code

    def poll(self) -> int | None:
        with self._lock:
            if self._code is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    return -1
                if pid:
                    self._code = os.waitstatus_to_exitcode(status)
            return self._code

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("drawing process", timeout)
            time.sleep(0.02)
        return self._code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def default_how() -> How:
    """Fork on Linux (fast, copy-on-write); spawn elsewhere (macOS frameworks are not fork-safe);
    ``ATTNVIZ_WORKER=spawn|thread`` chooses."""
    how = os.environ.get("ATTNVIZ_WORKER", "process")
    if how == "thread":
        return "thread"
    fork = how != "spawn" and sys.platform.startswith("linux") and hasattr(os, "fork")
    return "fork" if fork else "spawn"
