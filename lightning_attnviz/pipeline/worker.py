"""Drawing away from training: one low-priority child process per Python process, shared by monitors.

Training must never wait for pictures nor compete with them for the GIL, so the pipeline runs in a
child process (:func:`lightning_attnviz.serve.child_main`, niced, one thread), started on first use
and kept for the life of the parent. Jobs go over a pipe as pickles (plain data: tensors, arrays, strings);
results and warnings come back over another. The training thread only enqueues: a sender thread
writes, a reader thread reads. If the child cannot start or dies, the same pipeline runs on a
background thread in this process instead, and the user is told once.

Accounting is per monitor (:class:`Channel`): how many jobs are in flight (back-pressure: the
callback skips a capture rather than queue without bound), warnings to raise on the training thread,
and the drawing seconds per capture (to say which capture rate can be sustained).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning_attnviz.pipeline.child import Serve, receive, send


@dataclass
class Channel:
    """One monitor's view of the worker."""

    id: int
    in_flight: int = 0
    messages: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # drawing CPU seconds of recent captures
    lost: int = 0
    state: Any = None  # the pipeline's state after the last job drawn
    jobs: dict[int, Any] = field(default_factory=dict)  # jobs sent and not drawn yet, by id
    replies: dict[int, Any] = field(default_factory=dict)
    done: threading.Condition = field(default_factory=threading.Condition)
    on_outputs: Callable[[Any], None] | None = None  # sinks in this process, called on the reader thread


class Worker:
    """The parent side: sends jobs, routes answers to channels, notices a dead child."""

    def __init__(self, use_process: bool = True) -> None:
        self._ids = itertools.count(1)
        self._channels: dict[int, Channel] = {}
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.mode = "process"
        self._process: subprocess.Popen | None = None
        self._local: Serve | None = None
        self.failure: str | None = None
        if use_process:
            try:
                self._start_fork() if _can_fork() else self._start_process()
            except OSError as err:
                self.failure = f"the drawing process could not start ({err})"
        if self._process is None:
            self._start_thread()

    # -- starting -----------------------------------------------------------------------------------

    def _start_process(self) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        code = f"from lightning_attnviz.pipeline.child import child_main; child_main({write_fd})"
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(write_fd,),
                start_new_session=True,  # no terminal signals: Ctrl-C is handled by draining
                env=env,
            )
        finally:
            os.close(write_fd)
        results = os.fdopen(read_fd, "rb")
        threading.Thread(target=self._send_loop, name="attnviz-send", daemon=True).start()
        threading.Thread(target=self._read_loop, args=(results,), name="attnviz-read", daemon=True).start()

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
        self._process = _Forked(pid, os.fdopen(job_w, "wb"))  # type: ignore[assignment]
        results = os.fdopen(result_r, "rb")
        threading.Thread(target=self._send_loop, name="attnviz-send", daemon=True).start()
        threading.Thread(target=self._read_loop, args=(results,), name="attnviz-read", daemon=True).start()

    def _start_thread(self) -> None:
        self.mode = "thread"
        self._local = Serve(self._route)
        threading.Thread(target=self._local_loop, name="attnviz-draw", daemon=True).start()

    # -- public -------------------------------------------------------------------------------------

    def channel(self, on_outputs: Callable[[Any], None] | None = None) -> Channel:
        with self._lock:
            ch = Channel(next(self._ids), on_outputs=on_outputs)
            self._channels[ch.id] = ch
        return ch

    def alive(self) -> bool:
        return os.getpid() == self._pid and (self.mode == "thread" or self._process.poll() is None)  # type: ignore[union-attr]

    def post(self, ch: Channel, message: tuple) -> None:
        if message[0] == "job":
            with ch.done:
                ch.in_flight += 1
                ch.jobs[message[2]] = message[3]
        self._outbox.put(message)

    def request(self, ch: Channel, kind: str, timeout: float) -> Any:
        """Send ``kind`` ("state" or "close") after every job already sent; its answer, or None."""
        rid = next(self._ids)
        self._outbox.put((kind, ch.id, rid))
        deadline = time.monotonic() + timeout
        with ch.done:
            while rid not in ch.replies and self.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                ch.done.wait(min(left, 0.5))
            return ch.replies.pop(rid, None)

    def wait(self, ch: Channel, timeout: float) -> bool:
        """Until every job of ``ch`` is done (True), the timeout passes or the worker dies (False)."""
        deadline = time.monotonic() + timeout
        with ch.done:
            while ch.in_flight and self.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                ch.done.wait(min(left, 0.5))
            return ch.in_flight == 0

    def forget(self, ch: Channel) -> None:
        with self._lock:
            self._channels.pop(ch.id, None)

    def stop(self) -> None:
        """End the child after the jobs already sent (at interpreter exit)."""
        self._outbox.put(None)
        if self._process is not None:
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self._process.kill()

    # -- threads --------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        stdin: Any = self._process.stdin  # type: ignore[union-attr]  # a pipe, or _Forked's file
        while True:
            message = self._outbox.get()
            try:
                if message is None:
                    stdin.close()
                    return
                send(stdin, message)
            except (OSError, ValueError, pickle.PicklingError, TypeError, AttributeError) as err:
                if message is not None and message[0] == "job":
                    self._route(
                        (
                            "done",
                            message[1],
                            message[2],
                            None,
                            [f"AttentionMonitor: a capture could not be sent for drawing ({err}); lost."],
                            0.0,
                            None,
                        )
                    )
                if isinstance(err, OSError):
                    return

    def _read_loop(self, results: Any) -> None:
        while True:
            try:
                message = receive(results)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            self._route(message)
        self._on_death()

    def _local_loop(self) -> None:
        while True:
            message = self._outbox.get()
            if message is None:
                return
            try:
                self._local.handle(message)  # type: ignore[union-attr]
            except BaseException as err:
                if message[0] == "job":
                    self._route(
                        (
                            "done",
                            message[1],
                            message[2],
                            None,
                            [f"AttentionMonitor: drawing a capture failed ({type(err).__name__}: {err})."],
                            0.0,
                            None,
                        )
                    )

    def _route(self, message: tuple) -> None:
        kind, cid = message[0], message[1]
        ch = self._channels.get(cid)
        if ch is None:
            return
        if kind == "done" and message[3] is not None and ch.on_outputs is not None:
            try:  # loggers in this process: written here, off the training thread, before "done"
                ch.on_outputs(message[3])
            except Exception as err:
                with ch.done:
                    ch.messages.append(
                        f"AttentionMonitor: logging a capture failed ({type(err).__name__}: {err})."
                    )
        with ch.done:
            if kind == "done":
                _, _, job_id, _, messages, seconds, state = message
                ch.in_flight = max(0, ch.in_flight - 1)
                ch.jobs.pop(job_id, None)
                ch.state = state if state is not None else ch.state
                ch.messages.extend(messages)
                ch.seconds = [*ch.seconds, seconds][-8:]
            else:
                ch.replies[message[2]] = message[3] if kind == "state" else True
            ch.done.notify_all()

    def _on_death(self) -> None:
        """Tell every monitor, once, that the drawing process ended and what was lost with it."""
        code = self._process.poll() if self._process is not None else None
        with self._lock:
            channels = list(self._channels.values())
        for ch in channels:
            with ch.done:
                lost = f"; {ch.in_flight} capture(s) being drawn were lost" if ch.in_flight else ""
                ch.lost += ch.in_flight
                ch.messages.append(
                    f"AttentionMonitor: the drawing process ended (exit code {code}){lost}; drawing "
                    "continues on a background thread."
                )
                ch.in_flight = 0
                ch.jobs.clear()
                ch.done.notify_all()


def _can_fork() -> bool:
    """Fork on Linux (fast, copy-on-write); spawn elsewhere (macOS frameworks are not fork-safe)."""
    how = os.environ.get("ATTNVIZ_WORKER", "process")
    return how != "spawn" and sys.platform.startswith("linux") and hasattr(os, "fork")


class _Forked:
    """The forked child seen through the parts of ``subprocess.Popen`` the worker uses."""

    def __init__(self, pid: int, stdin: Any) -> None:
        self.pid, self.stdin = pid, stdin
        self._code: int | None = None

    def poll(self) -> int | None:
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
            os.kill(self.pid, 9)


_shared: Worker | None = None
_shared_lock = threading.Lock()


def shared_worker() -> Worker:
    """The worker of this process, started (or restarted after a death) on demand."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.alive():
            use_process = os.environ.get("ATTNVIZ_WORKER", "process") != "thread"
            if _shared is not None and _shared.mode == "process":
                use_process = False  # it died once: keep drawing, in a thread
            _shared = Worker(use_process)
            atexit.register(_shared.stop)
        return _shared
