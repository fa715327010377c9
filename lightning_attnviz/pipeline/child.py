"""The drawing process: a receiving thread that answers at once, and a drawing thread that runs each
monitor's pipeline and sinks below the training process's priority. Also the message framing both
sides use (length-prefixed pickles).

The receiving side never waits for a drawing: it answers :class:`Ping`, writes :class:`Spool` files
of captures not yet drawn, and hears :class:`Hurry` while a capture is being drawn. Each step of a
capture runs on the lane :mod:`lightning_attnviz.pipeline.lanes` picks when the step starts (nice 19
while nothing waits, nice +5 to catch up, training's priority once training waits). Every request is
answered, a failing one with why.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import struct
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from lightning_attnviz.pipeline import spool
from lightning_attnviz.pipeline.lanes import CATCH_UP_SECONDS, DRAWING_NICE, PER_THREAD, Lanes
from lightning_attnviz.pipeline.messages import Close, Closed, Done, Draw, Hurry, Open, Ping, Pong, Spool

_HEADER = struct.Struct("<Q")


def send(stream: Any, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def receive(stream: Any) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


class Serve:
    """The drawing side of every monitor of one training process.

    Args:
        reply: sends an answer back (called from both threads; must be thread-safe).
        lower: draw below the training process's priority (a drawing process, never a thread of the
            training process: that would change its global state).
    """

    def __init__(self, reply: Callable[[Any], None], lower: bool) -> None:
        self.reply, self.lower = reply, lower
        self.pipelines: dict[int, Any] = {}
        self.sinks: dict[int, list] = {}
        self.notes: dict[int, list[str]] = {}  # per channel: said with its next answer
        self.queue: queue.Queue[Any] = queue.Queue()
        self.lock = threading.Lock()
        self.pending: dict[int, Draw] = {}  # received and not drawn yet, by job id
        self.spooled: dict[int, str] = {}  # the spool file of a pending capture, once written
        self.quitting = False
        self.hurry = threading.Event()
        self.arrived: dict[int, float] = {}  # when each pending capture arrived, by job id
        self.lanes = Lanes()
        self._spools: queue.Queue[tuple[int, str]] = queue.Queue()
        self._spooler: threading.Thread | None = None

    # -- the receiving thread -----------------------------------------------------------------------

    def accept(self, message: Any) -> None:
        """Take one message as it arrives: answer what needs no drawing, queue the rest."""
        if isinstance(message, Ping):
            self.reply(Pong(message.request))
        elif isinstance(message, Hurry):
            self._hurry(message.now)
        elif isinstance(message, Spool):
            self._keep(message.job_id, message.path)
        else:
            if isinstance(message, Draw):
                with self.lock:
                    self.pending[message.job_id] = message
                    self.arrived[message.job_id] = time.monotonic()
                if message.spool:
                    self._keep(message.job_id, message.spool)
            self.queue.put(message)

    def _hurry(self, now: bool) -> None:
        """Training waits (or runs again): the next step of a capture is drawn at its priority."""
        if now:
            self.hurry.set()
        else:
            self.hurry.clear()

    def finish(self, drop: bool = False) -> None:
        """No more messages: draw what is queued, or (``drop``: the training process is gone) only
        what is being drawn; a capture kept beside the logs stays there for a resume."""
        self.quitting = drop
        self.queue.put(None)

    def _keep(self, job_id: int, path: str) -> None:
        """Spool files are written on a thread of their own: a large capture takes a while to write,
        and the receiving thread must stay free to answer."""
        if self._spooler is None:
            self._spooler = threading.Thread(target=self._spool_loop, name="attnviz-spool", daemon=True)
            self._spooler.start()
        self._spools.put((job_id, path))

    def _spool_loop(self) -> None:
        while True:
            self._spool(*self._spools.get())

    def _spool(self, job_id: int, path: str) -> None:
        with self.lock:
            draw = self.pending.get(job_id)
        if draw is None:
            return  # drawn already: the training process keeps the state after it
        try:
            spool.write_job(path, draw.job)
        except Exception as err:
            return self._note(
                draw.channel,
                f"AttentionMonitor: the capture at step {draw.job.step} could not be kept in {path} for a "
                f"resume ({type(err).__name__}: {err}); a resume from this checkpoint cannot draw it.",
            )
        with self.lock:
            if job_id in self.pending:
                self.spooled[job_id] = path
                return
        spool.remove(path)  # drawn meanwhile: the training process keeps the state after it

    # -- the drawing thread ---------------------------------------------------------------------------

    def work(self) -> None:
        while (message := self.queue.get()) is not None and not self.quitting:
            try:
                self.handle(message)
            except Exception as err:  # every request is answered, a failing one with why
                self._failed(message, err)

    def handle(self, message: Any) -> None:
        if isinstance(message, Open):
            self._open(message)
        elif isinstance(message, Draw):
            self._draw(message)
        elif isinstance(message, Close):
            problems = self._close(message.channel)
            self.reply(
                Closed(message.channel, message.request, tuple(problems + self._notes(message.channel)))
            )

    def _failed(self, message: Any, err: Exception) -> None:
        text = f"({type(err).__name__}: {err})"
        if isinstance(message, Draw):
            with self.lock:
                self.pending.pop(message.job_id, None)
                self.arrived.pop(message.job_id, None)
            notes = (f"AttentionMonitor: drawing a capture failed {text}.", *self._notes(message.channel))
            self.reply(Done(message.channel, message.job_id, None, notes, 0.0, None))
        elif isinstance(message, Close):
            self.reply(
                Closed(message.channel, message.request, (f"AttentionMonitor: closing failed {text}.",))
            )
        elif isinstance(message, Open):
            self._note(message.channel, f"AttentionMonitor: the drawing pipeline could not start {text}.")

    def _note(self, channel: int, text: str) -> None:
        with self.lock:
            self.notes.setdefault(channel, []).append(text)

    def _notes(self, channel: int) -> list[str]:
        with self.lock:
            return self.notes.pop(channel, [])

    def _open(self, message: Open) -> None:
        from lightning_attnviz.pipeline.run import Pipeline
        from lightning_attnviz.sinks.tensorboard import TensorBoardSink

        self._close(message.channel)
        self.pipelines[message.channel] = pipeline = Pipeline(message.setup)
        folder = message.tensorboard_dir
        self.sinks[message.channel] = [TensorBoardSink(folder)] if folder else []
        if message.state:
            try:
                pipeline.load_state_dict(message.state)
            except Exception as err:  # a damaged state costs the history, never the drawing
                self.pipelines[message.channel] = Pipeline(message.setup)
                self._note(
                    message.channel,
                    f"AttentionMonitor: the saved history could not be restored ({type(err).__name__}: "
                    f"{err}); evolution strips and drift start over.",
                )

    def _draw(self, message: Draw) -> None:
        pipeline = self.pipelines[message.channel]

        def draw() -> tuple[Any, list[str]]:
            outputs, messages = pipeline.run(message.job)
            for sink in self.sinks.get(message.channel, []):
                try:
                    self._gate(partial(sink.write, outputs))
                except Exception as err:  # one sink failing must not lose the others, nor the job
                    pipeline.writes.add(type(sink).__name__, getattr(sink, "what", str(sink)), err)
            messages = [*messages, *pipeline.writes.messages(message.job.step)]  # a full disk: said once
            return outputs, messages

        started = self._cpu()
        pipeline.gate = self._gate
        outputs, messages = self._at_priority(draw)
        seconds = self._cpu() - started
        state = pipeline.state_dict()  # so that a checkpoint never waits for drawing
        with self.lock:
            self.pending.pop(message.job_id, None)
            self.arrived.pop(message.job_id, None)
            kept = self.spooled.pop(message.job_id, None)
        if kept is not None:  # here too: the training process may be gone before it hears of it
            try:
                spool.mark_drawn(kept, state)
            except Exception as err:
                messages.append(f"AttentionMonitor: {kept} could not be marked drawn ({err}).")
        notes = tuple(messages + self._notes(message.channel))
        self.reply(
            Done(
                message.channel,
                message.job_id,
                outputs if message.want_outputs else None,
                notes,
                seconds,
                state,
            )
        )

    def _at_priority(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the lane due now; its steps (:meth:`_gate`) may move to another lane."""
        if not (self.lower and PER_THREAD):
            return fn()
        return self.lanes.start(fn, self._due())

    def _due(self) -> str:
        """The lane for the next step: ``full`` while training waits, ``catch_up`` while another
        capture waits behind this one or it has waited :data:`CATCH_UP_SECONDS`, else ``idle``."""
        if self.hurry.is_set():
            return "full"
        with self.lock:
            waiting, oldest = len(self.pending), min(self.arrived.values(), default=time.monotonic())
        if waiting > 1 or time.monotonic() - oldest > CATCH_UP_SECONDS:
            return "catch_up"
        return "idle"

    def _gate(self, step: Callable[[], Any]) -> Any:
        return self.lanes.gate(step, self._due())

    def _cpu(self) -> float:
        """CPU seconds so far of the drawing process (a capture's steps run on several of its threads),
        or of this thread where the drawing is a thread of the training process."""
        return time.process_time() if self.lower else time.thread_time()

    def _close(self, channel: int) -> list[str]:
        problems = []
        for sink in self.sinks.pop(channel, []):
            try:
                sink.close()
            except Exception as err:
                problems.append(
                    f"AttentionMonitor: closing {type(sink).__name__} failed ({type(err).__name__}: {err})."
                )
        self.pipelines.pop(channel, None)
        return problems


def _quiet() -> None:
    """The drawing process's own settings: one thread for maths, no terminal signals, no warnings
    (its warnings reach nobody: they travel back as messages)."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it drains us
    warnings.simplefilter("ignore")
    if not PER_THREAD:  # no nice value per thread: the whole process, for good
        with contextlib.suppress(OSError):
            os.nice(DRAWING_NICE)
    import torch

    torch.set_num_threads(1)


def serve_forever(jobs: Any, out: Any) -> None:
    """Read messages until the training process closes our input (or ends), then finish the capture
    being drawn and return: what is not drawn yet is the training process's to account for (it keeps
    every capture until it is drawn), and a capture kept beside the logs stays there for a resume."""
    lock = threading.Lock()

    def reply(message: Any) -> None:
        try:
            with lock:
                send(out, message)
        except OSError:  # the training process is gone
            os._exit(0)

    serve = Serve(reply, lower=True)
    drawing = threading.Thread(target=serve.work, name="attnviz-draw", daemon=True)
    drawing.start()
    while True:
        try:
            message = receive(jobs)
        except (EOFError, OSError):
            break
        serve.accept(message)
    serve.finish(drop=True)
    drawing.join()


def child_main(result_fd: int) -> None:
    """Entry of a spawned drawing process: jobs on stdin, answers on ``result_fd``."""
    _quiet()
    try:
        serve_forever(sys.stdin.buffer, os.fdopen(result_fd, "wb"))
    finally:
        os._exit(0)


def forked_main(job_fd: int, result_fd: int) -> None:
    """Entry of a forked drawing process (never returns: a fork must not run the parent's code on)."""
    try:
        import signal

        for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP"):  # the parent's handlers are not ours
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        _quiet()
        serve_forever(os.fdopen(job_fd, "rb"), os.fdopen(result_fd, "wb"))
    finally:
        os._exit(0)
