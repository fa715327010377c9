"""What one capture produces for the sinks, and the one protocol every sink follows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from lightning_attnviz.analysis.roles import PhaseChange


@dataclass
class EncodedPicture:
    tag: str
    kind: str
    sample: int
    layer: str | None
    png: bytes
    width: int
    height: int


@dataclass
class Outputs:
    """Everything one capture logs, ready for any sink."""

    step: int
    pictures: list[EncodedPicture] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, np.ndarray] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)
    layout: dict | None = None
    tab: list[tuple[str, bytes]] = field(default_factory=list)  # (tag, map record)
    # (kind, tag, record) of the run-level tab records: the overview, markers
    tab_extra: list[tuple[str, str, bytes]] = field(default_factory=list)
    phase_changes: list[PhaseChange] = field(default_factory=list)  # for the tab's step-slider markers
    epoch: int | None = None  # the epoch of the capture, for loggers that keep it beside the step (CSV)


def head_scalars(
    into: dict[str, float],
    tag: Callable[[int | None], str],
    per_head: np.ndarray,
    summary: Callable[[np.ndarray], float],
    heads: bool,
) -> None:
    """``tag(None)``: the layer's ``summary`` of its heads; ``tag(h)``: each head, with ``heads``.
    NaN heads are skipped, and a layer with none finite logs nothing.

    Shape:
        per_head: ``(H,)``.
    """
    finite = per_head[np.isfinite(per_head)]
    if finite.size:
        into[tag(None)] = float(summary(finite))
    if heads:
        for h, value in enumerate(per_head):
            if np.isfinite(value):
                into[tag(h)] = float(value)


class Sink(Protocol):
    """Writes what one capture produced; ``close`` is safe to call twice."""

    def write(self, out: Outputs) -> None: ...

    def close(self) -> None: ...
