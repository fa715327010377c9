"""The drawing process: a receiving thread that answers at once, and a drawing thread that runs each
monitor's pipeline and sinks below the training process's priority. Also the message framing both
sides use (length-prefixed pickles).

The receiving side never waits for a drawing: it answers :class:`Ping`, writes :class:`Spool` files
of captures not yet drawn, and hears :class:`Hurry` while a capture is being drawn. Each step of a
capture (a picture kind, its encoding, the tab's maps, the capture file) runs on one of three threads
("lanes") whose nice values differ (Linux keeps a nice value per thread), chosen when the step starts:
nice 19 while training runs and nothing else waits (the drawing takes what training leaves idle),
:data:`DRAWING_NICE` above training once a capture waits behind it or it has waited
:data:`CATCH_UP_SECONDS` (it keeps up on a busy machine), and training's own priority once training
ends and waits (``Hurry``). A thread can lower its own nice value but not raise it back without
privileges, so moving up means handing the next step to a lane started higher. Every request is
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
from lightning_attnviz.pipeline.messages import Close, Closed, Done, Draw, Hurry, Open, Ping, Pong, Spool

_HEADER = struct.Struct("<Q")


def _nice(value: str) -> int:
    return int(value) if value.isdigit() and int(value) <= 19 else 5


# How far below training the drawing runs while it catches up (``ATTNVIZ_NICE=0..19`` chooses).
# Under Linux's scheduler a thread's share of a contended core follows its weight: nice 0 → 1024,
# 5 → 335, 10 → 110, 19 → 15. At 19 alone the drawing starves on a machine kept busy by other work
# (9 of 20 step captures skipped in one loaded run); at 5 it gets ~a quarter of a core shared with one
# busy process. docs/drawing.md has the measurements.
DRAWING_NICE = _nice(os.environ.get("ATTNVIZ_NICE", "5"))
IDLE_NICE = 19  # while nothing waits: what training leaves idle, without pre-empting its threads
CATCH_UP_SECONDS = 10.0  # a capture waiting longer than this is drawn at DRAWING_NICE
_PER_THREAD = sys.platform.startswith("linux")  # elsewhere a nice value is the whole process's


class _Lane:
    """A thread that runs what it is handed at one nice value, set once when it starts (lowering a
    thread's nice value needs no privilege; raising it back does)."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._jobs: queue.Queue[tuple[Callable[[], Any], threading.Event, dict[str, Any]]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"attnviz-draw-nice{nice}", daemon=True)
        self._thread.start()

    def here(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, fn: Callable[[], Any]) -> Any:
        done, box = threading.Event(), dict[str, Any]()
        self._jobs.put((fn, done, box))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _loop(self) -> None:
        _set_nice(threading.get_native_id(), self.nice)
        while True:
            fn, done, box = self._jobs.get()
            try:
                box["value"] = fn()
            except BaseException as err:
                box["error"] = err
            finally:
                done.set()


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


def _set_nice(tid: int, value: int) -> None:
    """One thread's nice value (Linux keeps one per thread). Raising a thread's priority back needs
    CAP_SYS_NICE or RLIMIT_NICE (root in most containers); without, it stays where it is."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, min(19, value)))


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
        self._lanes: dict[str, _Lane] = {}  # "idle", "catch_up", "full": started by the drawing thread
        self._hop = threading.local()  # set on a lane while it runs a step handed to it
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
        if not (self.lower and _PER_THREAD):
            return fn()
        if not self._lanes:  # started from this thread, at training's priority: each lowers itself
            base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            catch_up = min(19, base + DRAWING_NICE)
            levels = {"idle": max(catch_up, IDLE_NICE), "catch_up": catch_up, "full": base}
            self._lanes = {name: _Lane(nice) for name, nice in levels.items()}
        return self._lanes[self._due()].run(fn)

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
        """Run one step of a capture on the lane due now (here when it is this thread's, or when this
        thread already runs a handed step: a lane never waits for itself)."""
        lane = self._lanes.get(self._due()) if self._lanes else None
        if lane is None or lane.here() or getattr(self._hop, "on", False):
            return step()

        def handed() -> Any:
            self._hop.on = True
            try:
                return step()
            finally:
                self._hop.on = False

        return lane.run(handed)

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
    if not _PER_THREAD:  # no nice value per thread: the whole process, for good
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
