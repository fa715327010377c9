"""One monitor's handle on the drawing worker, on the training side: open the pipeline, hand over
jobs without ever waiting, skip captures when drawing falls behind, keep what a checkpoint needs,
and drain at the end of a fit. The callback only says when."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from lightning_attnviz.pipeline.messages import Job, Setup, job_from_state, job_state
from lightning_attnviz.pipeline.worker import Channel, Worker, shared_worker
from lightning_attnviz.sinks.base import Outputs

MAX_IN_FLIGHT = 8  # captures taken and not yet drawn; beyond this, captures are skipped
DRAIN_SECONDS = 120.0  # the longest the end of a fit waits for its pictures
INTERRUPT_SECONDS = 15.0  # after an exception or Ctrl-C, wait less: the user wants out


def warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class Drawing:
    """The drawing side of one monitor during one fit.

    Args:
        setup: what stays fixed during the fit.
        tensorboard_dir: where the drawing process writes its event file (``None``: no TensorBoard).
        restored: ``{"pipeline": state, "replay": [jobs]}`` from a checkpoint or a previous close.
        on_outputs: called on a background thread with each capture's :class:`Outputs`, for sinks that
            live in the training process (loggers other than TensorBoard); ``None``: not needed.
    """

    def __init__(
        self,
        setup: Setup,
        tensorboard_dir: str | None,
        restored: dict[str, Any] | None = None,
        on_outputs: Callable[[Outputs], None] | None = None,
    ) -> None:
        self.setup, self.tensorboard_dir, self.on_outputs = setup, tensorboard_dir, on_outputs
        self.restored = restored or {}
        self.seconds: list[float] = []
        self._worker: Worker | None = None
        self._channel: Channel | None = None
        self._warned_skip = False
        self.open()

    def open(self, restored: dict[str, Any] | None = None) -> None:
        """(Re)open the pipeline: after a restore, or in a new worker after the old one died."""
        if restored is not None:
            self.restored = restored
        worker, old = shared_worker(), self._channel
        if self._worker is not worker or old is None:
            ch = worker.channel(self.on_outputs)
            if old is not None:  # what the dead worker had to say is still said
                ch.messages.extend(old.messages)
            self._channel = ch
        else:
            ch = old
        self._worker = worker
        worker.post(ch, ("open", ch.id, self.setup, self.restored.get("pipeline"), self.tensorboard_dir))
        for job in self.restored.get("replay", ()):
            worker.post(ch, ("replay", ch.id, 0, job if isinstance(job, Job) else job_from_state(job)))

    def ready(self) -> bool:
        """Whether a capture can be handed over now; when drawing falls behind, no (said once)."""
        if self._worker is None or not self._worker.alive():
            self.open()
        ch = self._channel
        if ch is None or ch.in_flight < MAX_IN_FLIGHT:
            return True
        if not self._warned_skip:
            self._warned_skip = True
            per = sum(ch.seconds) / len(ch.seconds) if ch.seconds else float("nan")
            warn(
                f"AttentionMonitor: captures arrive faster than they can be drawn (about {per:.2g} CPU "
                "seconds each, at low priority); captures are skipped until drawing catches up. Fewer "
                "captures (`every_n_steps`), `plots`, `layers` or `samples` make each one cheaper."
            )
        return False

    def submit(self, job: Job) -> None:
        ch = self._channel
        if self._worker is not None and ch is not None:
            self._worker.post(ch, ("job", ch.id, job.step, job, self.on_outputs is not None))
        self.say()

    def say(self) -> None:
        """Raise what the drawing side had to say, on the training thread."""
        ch = self._channel
        while ch is not None and ch.messages:
            warn(ch.messages.pop(0))

    @staticmethod
    def saved(restored: dict[str, Any]) -> dict[str, Any]:
        """``restored`` as a checkpoint keeps it (jobs as tensors, strings and numbers)."""
        replay = [job_state(j) if isinstance(j, Job) else j for j in restored.get("replay", ())]
        return {"pipeline": restored.get("pipeline"), "replay": replay}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, without waiting: the pipeline's state after the last capture
        drawn, and the captures still drawing (as tensors, strings and numbers)."""
        ch = self._channel
        if ch is None:
            return self.saved(self.restored)
        with ch.done:
            return {"pipeline": ch.state, "replay": [job_state(j) for j in ch.jobs.values()]}

    def close(self, wait: bool = True, seconds: float = DRAIN_SECONDS) -> None:
        """Wait up to ``seconds`` for every capture taken, close the pipeline; safe to call twice."""
        worker, ch = self._worker, self._channel
        if worker is None or ch is None:
            return
        if wait and not worker.wait(ch, seconds):
            warn(
                f"AttentionMonitor: {ch.in_flight} capture(s) were still drawing after {seconds:.0f} s "
                "and are lost."
            )
        self.restored = self.state()
        self.seconds = list(ch.seconds)
        worker.request(ch, "close", DRAIN_SECONDS)
        self.say()
        worker.forget(ch)
        self._worker = self._channel = None
