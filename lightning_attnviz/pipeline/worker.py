"""Drawing away from training: one drawing process per Python process, shared by monitors, that
never holds training up, never loses a capture it was handed, and whose every wait is bounded.

Training must never wait for pictures nor compete with them for the GIL, so the pipeline runs in a
child process (:mod:`lightning_attnviz.pipeline.child`), started on first use (:mod:`.link`). The
training process keeps every capture it hands over until its :class:`Done` arrives, and the
pipeline's state after the last capture drawn. So when the drawing process ends (killed, crashed),
a new one is started at the next training step, reopened from that state (the history goes on),
and handed the captures again. A capture that was being drawn each of :data:`~.channel.POISON` times the
process ended is not drawn again (it may be what ends it; said once); after :data:`MAX_DEATHS` ends,
or when no process can start, drawing goes on in a thread of the training process (said once).

A drawing process that stops answering (stopped by a signal, stuck) for :data:`STALL_SECONDS` while
captures wait is ended and replaced the same way. The end of a fit waits at most its ``seconds`` for
the captures and the close of the sinks, says what it waits for once it is long, then ends what is
still drawing and names every capture that was not drawn, and why.

Accounting is per monitor (:class:`~.channel.Channel`): captures in flight (for back-pressure), warnings,
drawing seconds of recent captures, and the spool file of each capture a checkpoint listed.
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

from lightning_attnviz.pipeline import spool
from lightning_attnviz.pipeline.channel import Channel, drop_poison
from lightning_attnviz.pipeline.link import How, Link, default_how
from lightning_attnviz.pipeline.messages import Close, Closed, Done, Draw, Hurry, Open, Ping, Pong, Spool

STALL_SECONDS = 10.0  # no answer to a ping for this long while captures wait: the process is stuck
PING_SECONDS = 1.0
MAX_DEATHS = 5  # ends of the drawing process (in one Python process) before drawing moves to a thread
LONG_WAIT = 5.0  # the end of a fit says what it waits for once it has waited this long
RESERVE = 3.0  # of a close's seconds, kept for ending a late process and hearing its last answers


class Worker:
    """The training side of the drawing process: hands messages over, routes answers to channels,
    replaces a drawing process that ended or stopped answering."""

    def __init__(self, how: How | None = None) -> None:
        self.pid = os.getpid()
        self._lock = threading.RLock()
        self._channels: dict[int, Channel] = {}
        self._ids = itertools.count(1)  # channels, pings and close requests
        self._deliveries: queue.Queue[Any] = queue.Queue()
        self._undelivered = 0
        self._pings: dict[int, float] = {}
        self._heard = time.monotonic()
        self._deaths = 0
        self._closing = 0
        self._ended_by_us: tuple[str, bool] | None = None  # why, and whether the next start says it
        self.failure: str | None = None
        threading.Thread(target=self._deliver_loop, name="attnviz-deliver", daemon=True).start()
        self.link = self._connect(how or default_how())

    @property
    def mode(self) -> How:
        return self.link.how

    def _connect(self, how: How) -> Link:
        if how != "thread":
            try:
                return Link(how, self._incoming, self._on_end)
            except OSError as err:
                self.failure = f"a drawing process could not start ({err})"
        return Link("thread", self._incoming, self._on_end)

    # -- the training thread ------------------------------------------------------------------------

    def channel(self, on_outputs: Callable[[Any], None] | None = None) -> Channel:
        with self._lock:
            ch = Channel(next(self._ids), on_outputs=on_outputs)
            self._channels[ch.id] = ch
        return ch

    def open(self, ch: Channel, message: Open) -> None:
        with ch.done:
            ch.opened, ch.state = message, message.state
        self.link.send(message)

    def submit(self, ch: Channel, draw: Draw) -> None:
        with ch.done:
            ch.jobs[draw.job_id] = draw
            ch.since[draw.job_id] = time.monotonic()
            if draw.spool:
                ch.spools[draw.job_id] = draw.spool
        self.link.send(draw)

    def spool(self, ch: Channel, job_id: int, path: str) -> None:
        with ch.done:
            if job_id not in ch.jobs:
                return
            ch.spools[job_id] = path
        self.link.send(Spool(ch.id, job_id, path))

    def check(self, revive: bool = True) -> str | None:
        """Start a new drawing process if the last one ended; end one that stopped answering (it is
        replaced at the next check). Returns why it ended a stuck process, if it did now."""
        if os.getpid() != self.pid:
            return None
        if not self.link.alive():
            if revive:
                self._revive()
            return None
        return self._heartbeat()

    def forget(self, ch: Channel) -> None:
        with self._lock:
            self._channels.pop(ch.id, None)

    def stop(self) -> None:  # at interpreter exit
        self.link.stop()

    # -- ends and stalls ------------------------------------------------------------------------------

    def _heartbeat(self) -> str | None:
        if self.link.how == "thread":
            return None  # a thread cannot be replaced; a close still ends at its deadline
        now = time.monotonic()
        with self._lock:
            busy = self._closing or any(ch.jobs for ch in self._channels.values())
            if not busy:
                self._pings.clear()
                return None
            rid = None
            if now - max(self._pings.values(), default=0.0) >= PING_SECONDS:
                rid = next(self._ids)
                self._pings[rid] = now
            oldest = min(self._pings.values())
        if rid is not None:
            self.link.send(Ping(rid))
        if now - oldest < STALL_SECONDS or now - self._heard < STALL_SECONDS:
            return None
        why = f"stopped answering for {STALL_SECONDS:.0f} s"
        if self.link.stopped():
            why += " (it is stopped by a signal, e.g. SIGSTOP)"
        self._ended_by_us = (why, not self._closing)  # a close says it itself
        self.link.kill()
        return why

    def _revive(self) -> None:
        """A new drawing process, reopened where the last one was, handed every capture it held."""
        old = self.link
        old.ended.wait(2.0)  # its last answers are delivered first: nothing is drawn twice
        self._settle(2.0)
        old.send(None)  # its sender thread ends
        ended_by_us, self._ended_by_us = self._ended_by_us, None
        said = ended_by_us is None or ended_by_us[1]
        if said:
            self._deaths += 1
        how = default_how() if self._deaths < MAX_DEATHS and old.how != "thread" else "thread"
        self.failure = None
        self.link = self._connect(how)
        if self._closing:
            self.link.send(Hurry())  # training waits for it
        self._pings.clear()
        self._heard = time.monotonic()
        with self._lock:
            channels = [ch for ch in self._channels.values() if ch.opened is not None]
        dropped = drop_poison(channels) if said else {}
        cause = f"it {ended_by_us[0]}" if ended_by_us else f"exit code {old.exit_code}"
        for ch in channels:
            with ch.done:
                # only opened channels were kept above, and `opened` is set once, never cleared
                self.link.send(replace(cast(Open, ch.opened), state=ch.state))
                for job_id, draw in ch.jobs.items():
                    self.link.send(replace(draw, spool=ch.spools.get(job_id)))
                if said:
                    ch.messages.append(self._death_message(ch, cause, dropped.get(ch.id)))

    def _death_message(self, ch: Channel, cause: str, dropped: str | None) -> str:
        held = f"; it held {len(ch.jobs)} capture(s) (step(s) {ch.steps()})" if ch.jobs else ""
        again = " and draws them again" if ch.jobs else ""
        if self.link.how == "thread":
            why = self.failure or f"the drawing process ended {self._deaths} times"
            where = f"drawing continues on a thread in the training process ({why}){again}"
        else:
            where = f"a new drawing process took over{again}"
        lost = f"; {dropped}" if dropped else ""
        return f"AttentionMonitor: the drawing process ended ({cause}){held}; {where}{lost}."

    # -- the end of a fit -----------------------------------------------------------------------------

    def close(self, ch: Channel, seconds: float, tell: Callable[[str], None]) -> list[str]:
        """Wait at most ``seconds`` in all for ``ch``'s captures and the close of its sinks; returns
        what could not be done, in words. ``tell`` says, once, what a long wait is for. With
        ``seconds=0`` nothing is waited for: the sinks are closed after what was handed over."""
        if seconds <= 0:
            self.link.send(Close(ch.id, next(self._ids)))
            return []
        start = time.monotonic()
        drain_until, end = start + max(0.0, seconds - RESERVE), start + seconds
        self.link.send(Hurry())
        with self._lock:
            self._closing += 1
        why: str | None = None
        try:
            why = self._drain(ch, drain_until, tell)
            if why is not None and self.link.how != "thread":
                if self.link.alive():  # still drawing at the deadline: end it, so that nothing
                    self._ended_by_us = (why, False)  # is written after the count below
                    self.link.kill()
                self.link.ended.wait(max(0.1, min(2.0, end - time.monotonic())))
                self._settle(max(0.1, min(2.0, end - time.monotonic())))
            problems = self._close_sinks(ch, end) if why is None else []
        finally:
            with self._lock:
                self._closing -= 1
            self.link.send(Hurry(now=bool(self._closing)))
        with ch.done:
            if ch.jobs:
                lost = f"{len(ch.jobs)} capture(s) were not drawn (step(s) {ch.steps()})"
                problems.append(f"AttentionMonitor: {lost}: {why}.")
        return problems

    def _drain(self, ch: Channel, until: float, tell: Callable[[str], None]) -> str | None:
        """Until ``ch`` holds no capture (``None``), or why not."""
        start, told = time.monotonic(), False
        while True:
            stuck = self.check()  # a process that ended is replaced and draws them again
            if stuck is not None:
                return f"the drawing process {stuck} and was ended"  # e.g. "stopped answering for 10 s"
            with ch.done:
                if not ch.jobs:
                    return None
                now = time.monotonic()
                if now >= until:
                    return f"they were still being drawn {now - start:.0f} s after training ended"
                ch.done.wait(min(0.25, until - now))
                count, steps = len(ch.jobs), ch.steps()
            answering = time.monotonic() - self._heard < 3 * PING_SECONDS  # not a stuck process
            if not told and count and answering and time.monotonic() - start > LONG_WAIT:
                told = True
                tell(
                    f"AttentionMonitor: waiting for {count} capture(s) still being drawn (step(s) {steps}), "
                    f"at most {until - time.monotonic():.0f} s more."
                )

    def _close_sinks(self, ch: Channel, end: float) -> list[str]:
        rid = next(self._ids)
        self.link.send(Close(ch.id, rid))
        while True:
            stuck = self.check(revive=False)
            with ch.done:
                if rid in ch.closed:
                    return list(ch.closed.pop(rid))
                if stuck is not None or not self.link.alive() or time.monotonic() >= end:
                    break
                ch.done.wait(0.25)
        why = stuck or ("it ended" if not self.link.alive() else "no answer in time")
        return [
            f"AttentionMonitor: the drawing process did not close its files ({why}); the last capture's "
            "event records may be incomplete."
        ]

    # -- the reader and delivery threads -----------------------------------------------------------------

    def _incoming(self, message: Any) -> None:
        self._heard = time.monotonic()
        if isinstance(message, Pong):
            with self._lock:
                self._pings = {r: t for r, t in self._pings.items() if r > message.request}
            return
        with self._lock:
            self._undelivered += 1
        self._deliveries.put(message)

    def _on_end(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
        for ch in channels:
            with ch.done:
                ch.done.notify_all()

    def _settle(self, timeout: float) -> None:
        """Until every answer received so far is routed (bounded)."""
        deadline = time.monotonic() + timeout
        while self._undelivered and time.monotonic() < deadline:
            time.sleep(0.01)

    def _deliver_loop(self) -> None:
        """Answers in order, off the reader thread: loggers written here may take a while, and the
        reader must stay free to hear pongs."""
        while True:
            message = self._deliveries.get()
            try:
                self._route(message)
            finally:
                with self._lock:
                    self._undelivered -= 1

    def _route(self, message: Any) -> None:
        ch = self._channels.get(message.channel)
        if ch is None:
            return
        if isinstance(message, Closed):
            with ch.done:
                ch.closed[message.request] = message.messages
                ch.done.notify_all()
            return
        if not isinstance(message, Done):
            return
        with ch.done:
            known, path = message.job_id in ch.jobs, ch.spools.get(message.job_id)
        if not known:
            return  # answered twice (handed again after the process ended): once is enough
        notes = list(message.messages)
        if message.outputs is not None and ch.on_outputs is not None:
            try:  # loggers in this process: written before the capture counts as drawn
                ch.on_outputs(message.outputs)
            except Exception as err:
                notes.append(f"AttentionMonitor: logging a capture failed ({type(err).__name__}: {err}).")
        if path is not None:
            try:
                spool.mark_drawn(path, message.state or ch.state, overwrite=False)
            except Exception as err:
                notes.append(
                    f"AttentionMonitor: the state after step {ch.jobs[message.job_id].job.step} "
                    f"could not be kept beside the logs ({type(err).__name__}: {err})."
                )
        with ch.done:
            ch.jobs.pop(message.job_id, None)
            wall = time.monotonic() - ch.since.pop(message.job_id, time.monotonic())
            ch.spools.pop(message.job_id, None)
            ch.attempts.pop(message.job_id, None)
            if message.state is not None:
                ch.state = message.state
            if message.seconds > 0:
                ch.seconds, ch.walls = [*ch.seconds, message.seconds][-8:], [*ch.walls, wall][-8:]
            ch.messages.extend(notes)
            ch.done.notify_all()


_shared: Worker | None = None
_shared_lock = threading.Lock()


def shared_worker() -> Worker:
    """The worker of this process, started on first use (a forked copy of this process gets its own)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.pid != os.getpid():
            _shared = Worker()
            atexit.register(_shared.stop)
        return _shared
