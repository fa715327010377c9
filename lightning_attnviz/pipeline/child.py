"""The drawing process: reads jobs from stdin, runs each monitor's pipeline and sinks, answers on a
pipe of its own. Also the message framing both sides use (length-prefixed pickles)."""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

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
    """The drawing side: one :class:`~lightning_attnviz.pipeline.Pipeline` (and sinks) per monitor."""

    def __init__(self, reply: Callable[[Any], None]) -> None:
        self.reply = reply
        self.pipelines: dict[int, Any] = {}
        self.sinks: dict[int, list] = {}

    def handle(self, message: tuple) -> None:
        from lightning_attnviz.pipeline.run import Pipeline
        from lightning_attnviz.sinks.tensorboard import TensorBoardSink

        kind, channel = message[0], message[1]
        if kind == "open":
            _, _, setup, state, tensorboard_dir = message
            self._close(channel)
            self.pipelines[channel] = pipeline = Pipeline(setup)
            if state:
                pipeline.load_state_dict(state)
            self.sinks[channel] = [TensorBoardSink(tensorboard_dir)] if tensorboard_dir else []
        elif kind == "job":
            _, _, job_id, job, want_outputs = message
            started = time.process_time()
            outputs, messages = self.pipelines[channel].run(job)
            for sink in self.sinks.get(channel, []):
                try:
                    sink.write(outputs)
                except Exception as err:  # one sink failing must not lose the others, nor the job
                    messages.append(
                        f"AttentionMonitor: writing to {type(sink).__name__} failed "
                        f"({type(err).__name__}: {err})."
                    )
            seconds = time.process_time() - started
            state = self.pipelines[channel].state_dict()  # so a checkpoint never waits for drawing
            self.reply(("done", channel, job_id, outputs if want_outputs else None, messages, seconds, state))
        elif kind == "replay":
            self.pipelines[channel].replay(message[3])
        elif kind == "state":
            found = self.pipelines.get(channel)
            self.reply(("state", channel, message[2], None if found is None else found.state_dict()))
        elif kind == "close":
            self._close(channel)
            self.reply(("closed", channel, message[2]))

    def _close(self, channel: int) -> None:
        for sink in self.sinks.pop(channel, []):
            sink.close()
        self.pipelines.pop(channel, None)


def _quiet_and_low() -> None:
    """The drawing process's own settings: low priority, one thread, no terminal signals."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it drains us
    warnings.simplefilter("ignore")  # this process's own state: its warnings reach nobody anyway
    with contextlib.suppress(OSError):
        os.nice(19)
    import torch

    torch.set_num_threads(1)


def serve_forever(jobs: Any, out: Any) -> None:
    """Read jobs until EOF, answer each; a job that cannot run at all is answered, never fatal."""
    serve = Serve(lambda m: send(out, m))
    while True:
        try:
            message = receive(jobs)
        except EOFError:
            break
        try:
            serve.handle(message)
        except Exception as err:
            if message[0] == "job":
                text = f"AttentionMonitor: drawing a capture failed ({type(err).__name__}: {err})."
                send(out, ("done", message[1], message[2], None, [text], 0.0, None))
    for channel in list(serve.pipelines):
        serve._close(channel)


def child_main(result_fd: int) -> None:
    """Entry of a spawned drawing process: jobs on stdin, answers on ``result_fd``."""
    _quiet_and_low()
    serve_forever(sys.stdin.buffer, os.fdopen(result_fd, "wb"))


def forked_main(job_fd: int, result_fd: int) -> None:
    """Entry of a forked drawing process (never returns: a fork must not run the parent's code on)."""
    try:
        import signal

        for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP"):  # the parent's handlers are not ours
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), signal.SIG_DFL)
        _quiet_and_low()
        serve_forever(os.fdopen(job_fd, "rb"), os.fdopen(result_fd, "wb"))
    finally:
        os._exit(0)
