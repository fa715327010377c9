"""One monitor's account with the drawing side: the captures it handed over and holds until they are
drawn, their spool files and timings, its warnings; and which capture is not handed over again after
the drawing process ended while drawing it."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning_attnviz.pipeline.messages import Draw, Open

POISON = 3  # a capture held at this many ends (the oldest each time) is not drawn again

_job_ids = itertools.count(1)  # unique across drawing processes: a capture drawn again keeps its id


def next_job_id() -> int:
    return next(_job_ids)


@dataclass
class Channel:
    """One monitor's view of the drawing side: the captures it holds until they are drawn."""

    id: int
    on_outputs: Callable[[Any], None] | None = None  # loggers in this process, on the delivery thread
    opened: Open | None = None
    jobs: dict[int, Draw] = field(default_factory=dict)  # handed over and not drawn, oldest first
    since: dict[int, float] = field(default_factory=dict)  # when each was handed over (monotonic)
    spools: dict[int, str] = field(default_factory=dict)  # the spool file of a capture, if any
    attempts: dict[int, int] = field(default_factory=dict)  # ends of the process while it was held
    state: Any = None  # the pipeline's state after the last capture drawn
    seconds: list[float] = field(default_factory=list)  # CPU seconds of recent captures
    walls: list[float] = field(default_factory=list)  # seconds from handing over to drawn
    messages: list[str] = field(default_factory=list)
    closed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    done: threading.Condition = field(default_factory=threading.Condition)

    def steps(self) -> str:
        return ", ".join(str(draw.job.step) for draw in self.jobs.values())


def drop_poison(channels: list[Channel]) -> dict[int, str]:
    """The capture being drawn when the process ended (the oldest held), if that is the
    :data:`POISON`-th time: drawing it again could end the next process too."""
    held = [(job_id, ch) for ch in channels for job_id in ch.jobs]
    if not held:
        return {}
    job_id, ch = min(held, key=lambda item: item[0])
    with ch.done:
        draw = ch.jobs[job_id]
        ch.attempts[job_id] = ch.attempts.get(job_id, 0) + 1
        if ch.attempts[job_id] < POISON:
            return {}
        del ch.jobs[job_id]
        ch.since.pop(job_id, None)
        ch.spools.pop(job_id, None)
        ch.done.notify_all()
    return {ch.id: f"the capture at step {draw.job.step}, held each time, is not drawn again"}
