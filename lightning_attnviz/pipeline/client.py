"""One monitor's handle on the drawing worker, on the training side: open the pipeline (from a
checkpoint, drawing what it left in flight), hand over captures without ever waiting, skip step
captures when drawing falls behind, keep what a checkpoint needs (small: captures in flight stay
beside the logs), and wait a bounded time at the end of a fit. The callback only says when."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_warn

from lightning_attnviz.pipeline import spool
from lightning_attnviz.pipeline.channel import next_job_id
from lightning_attnviz.pipeline.messages import Draw, Job, Open, Setup
from lightning_attnviz.pipeline.worker import shared_worker
from lightning_attnviz.sinks.base import Outputs

MAX_IN_FLIGHT = 8  # step captures taken and not yet drawn; beyond this, step captures are skipped
DRAIN_SECONDS = 60.0  # the longest the end of a fit waits for its pictures (and its files' close)
INTERRUPT_SECONDS = 15.0  # after an exception or Ctrl-C, wait less: the user wants out


def warn(message: str) -> None:
    """One warning, on global rank zero only (every rank runs the callback's hooks)."""
    rank_zero_warn(message, category=RuntimeWarning, stacklevel=5)


class Drawing:
    """The drawing side of one monitor during one fit.

    Args:
        setup: what stays fixed during the fit.
        tensorboard_dir: where the drawing process writes its event file (``None``: no TensorBoard).
        on_outputs: called on a background thread with each capture's :class:`Outputs`, for sinks that
            live in the training process (loggers other than TensorBoard); ``None``: not needed.
        spool_dir: where captures in flight at a checkpoint are kept until drawn (``None``: nowhere).
    """

    def __init__(
        self,
        setup: Setup,
        tensorboard_dir: str | None,
        on_outputs: Callable[[Outputs], None] | None = None,
        spool_dir: str | None = None,
    ) -> None:
        self.setup, self.tensorboard_dir, self.spool_dir = setup, tensorboard_dir, spool_dir
        self.worker = shared_worker()
        self.worker.check()  # started (or replaced) now, before the model moves to its device
        self.channel = self.worker.channel(on_outputs)
        self.on_outputs = on_outputs
        self.restored: dict[str, Any] = {"pipeline": None, "inflight": []}
        self.seconds: list[float] = []
        self.skipped = 0
        self._resumed: list[tuple[Job, str]] = []
        self._opened = self._closed = False

    def restore(self, saved: dict[str, Any]) -> None:
        """Go on from a checkpoint: its history, and the captures it left in flight (drawn now if
        their files are still beside the logs; said once if not)."""
        found = spool.resolve(saved.get("pipeline"), list(saved.get("inflight") or []))
        self.restored = {"pipeline": found.state, "inflight": []}
        self._resumed = found.jobs
        if found.problems:
            warn(
                "AttentionMonitor: the checkpoint lists captures that were still being drawn when it was "
                f"saved, and some cannot be drawn now: {'; '.join(found.problems)}."
            )
        self._open()

    def _open(self) -> None:
        """Opened on first use: after a restore, so that the pipeline starts from the checkpoint."""
        if self._opened:
            return
        self._opened = True
        ch = self.channel
        self.worker.open(ch, Open(ch.id, self.setup, self.restored["pipeline"], self.tensorboard_dir))
        for job, path in self._resumed:
            self.worker.submit(ch, Draw(ch.id, next_job_id(), job, self.on_outputs is not None, path))
        self._resumed = []

    def ready(self, validation: bool) -> bool:
        """Whether a capture can be handed over now. Validation captures always can; step captures
        are skipped while :data:`MAX_IN_FLIGHT` wait (said once, with what drawing costs)."""
        self.worker.check()
        ch = self.channel
        with ch.done:
            waiting = len(ch.jobs)
            cpu, wall = list(ch.seconds), list(ch.walls)
            oldest = min(ch.since.values(), default=time.monotonic())
        if validation or waiting < MAX_IN_FLIGHT:
            return True
        self.skipped += 1
        if self.skipped == 1:
            if cpu:
                cost = (
                    f"the last {len(cpu)} drawn took {statistics.median(cpu):.2g} CPU seconds and "
                    f"{statistics.median(wall):.2g} s each"
                )
            else:
                cost = (
                    f"none has finished drawing yet; the oldest has waited {time.monotonic() - oldest:.0f} s"
                )
            warn(
                "AttentionMonitor: step captures arrive faster than they can be drawn "
                f"({waiting} are waiting; {cost}); step captures are skipped until drawing catches up "
                "(validation captures never are). Fewer captures (`every_n_steps`), `plots`, `layers` or "
                "`samples` make each one cheaper."
            )
        return False

    def submit(self, job: Job) -> None:
        self._open()
        ch = self.channel
        self.worker.submit(ch, Draw(ch.id, next_job_id(), job, self.on_outputs is not None))
        self.say()

    def say(self) -> None:
        """Raise what the drawing side had to say, on the training thread (and notice a drawing
        process that ended or stopped answering)."""
        if not self._closed:
            self.worker.check()
        ch = self.channel
        with ch.done:
            messages, ch.messages = ch.messages, []
        for message in messages:
            warn(message)

    @staticmethod
    def saved(restored: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint keeps when no drawing runs (another rank, or after the fit)."""
        return {"pipeline": restored.get("pipeline"), "inflight": list(restored.get("inflight", ()))}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, without waiting: the pipeline's state after the last capture
        drawn, and the step and spool file of each capture still drawing (written beside the logs by
        the drawing process, removed once drawn)."""
        if not self._opened:
            inflight = [{"step": job.step, "path": path} for job, path in self._resumed]
            return {"pipeline": self.restored["pipeline"], "inflight": inflight}
        return self._held(keep=True)

    def _held(self, keep: bool) -> dict[str, Any]:
        """The state and the captures in flight; ``keep``: have those not kept yet written beside the logs."""
        ch = self.channel
        with ch.done:
            inflight = []
            for job_id, draw in list(ch.jobs.items()):
                path = ch.spools.get(job_id)
                if path is None and keep and self.spool_dir is not None:
                    path = spool.new_path(self.spool_dir, draw.job.step)
                    self.worker.spool(ch, job_id, path)
                if path is not None:
                    inflight.append({"step": draw.job.step, "path": path})
            return {"pipeline": ch.state, "inflight": inflight}

    def close(self, seconds: float = DRAIN_SECONDS) -> None:
        """Wait at most ``seconds`` for every capture taken and the close of the sinks, then say what
        was not drawn and why; safe to call twice. ``seconds=0``: let go without waiting."""
        if self._closed:
            return
        self._closed = True
        problems = []
        if self._opened:
            problems = self.worker.close(self.channel, seconds, warn)
            self.restored = self._held(keep=False)
        self.seconds = list(self.channel.seconds)
        self.say()
        for message in problems:
            warn(message)
        self.worker.forget(self.channel)
