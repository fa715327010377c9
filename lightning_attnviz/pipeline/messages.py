"""The plain data the drawing side receives: a :class:`Setup` once per fit and a :class:`Job` per
capture (both picklable); a job as tensors, strings and numbers (:func:`job_state`,
:func:`job_from_state`), as the spool files beside the logs keep it; and every message between the
training process and the drawing process, one frozen dataclass per kind.

Training → drawing: :class:`Open` (a monitor's pipeline), :class:`Draw` (one capture), :class:`Spool`
(keep a capture beside the logs until it is drawn), :class:`Close`, :class:`Ping` (are you there?),
:class:`Hurry` (training waits now: draw at full priority). Drawing → training: :class:`Done`,
:class:`Closed`, :class:`Pong`. The receiving side of the drawing process answers ``Ping`` and
handles ``Spool`` and ``Hurry`` at once, even while a capture is being drawn."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from lightning_attnviz.capture.banded import BandInputs
from lightning_attnviz.capture.blocksparse import BlockSparseInputs
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.inputs import MHAInputs, Pending, ScoresInputs, SDPAInputs, SoftmaxOutput
from lightning_attnviz.capture.relevance import RelevanceMap
from lightning_attnviz.capture.windows import WindowInputs
from lightning_attnviz.pipeline.settings import MonitorConfig
from lightning_attnviz.render.plots import PictureSettings
from lightning_attnviz.sinks.base import Outputs
from lightning_attnviz.sinks.tags import Tags


@dataclass(frozen=True)
class Setup:
    """What stays fixed during a fit."""

    config: MonitorConfig
    plots: tuple[str, ...]
    grid: PatchGrid | None
    tags: Tags
    log_dir: str | None  # where the saved captures go (None: not saved)

    @property
    def sink(self) -> int:
        """Leading keys counted as the attention sink, and never pooled: ``sink_tokens``, else a ViT's
        prefix tokens, else 1."""
        prefix = self.grid.prefix_tokens if self.grid is not None else 0
        return self.config.sink_tokens or prefix or 1

    @property
    def pictures(self) -> PictureSettings:
        """What this fit's pictures are drawn with (saved with each capture for the CLI)."""
        c = self.config
        return PictureSettings(self.plots, c.max_tokens, self.sink, c.heads, c.top_k, self.grid,
                               c.rollout_fusion, c.rollout_discard)  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One capture: the taps' pending inputs and what the pictures need of the fixed samples."""

    step: int
    epoch: int
    pending: tuple[Pending, ...]
    labels: tuple[tuple[str, ...] | None, ...]  # per sample, or None for positions
    images: tuple[np.ndarray, ...]  # per sample, (H, W, 3) float in [0, 1] (vision runs)
    diagnose: bool  # False for the sanity check: an untrained model's uniform heads are no news
    modules: tuple[tuple[str, str, str, str], ...] = ()  # module table rows, when it is due
    target_labels: tuple[tuple[str, ...] | None, ...] = ()  # decoder tokens per sample (encoder–decoder)
    relevance: tuple[RelevanceMap, ...] = ()  # per sample, with relevance=True
    token_ids: tuple[np.ndarray | None, ...] = ()  # per sample, int64 (T,): the role scores' patterns


def job_state(job: Job) -> dict[str, Any]:
    """``job`` as tensors, strings and numbers only: what a checkpoint loaded with
    ``torch.load(weights_only=True)`` can hold."""
    pending = [
        {
            **{f.name: getattr(p, f.name) for f in fields(p) if f.name != "inputs"},
            "kind": type(p.inputs).__name__,
            "inputs": {f.name: getattr(p.inputs, f.name) for f in fields(p.inputs)},
        }
        for p in job.pending
    ]
    return {
        "step": job.step,
        "epoch": job.epoch,
        "pending": pending,
        "diagnose": job.diagnose,
        "labels": [None if x is None else list(x) for x in job.labels],
        "target_labels": [None if x is None else list(x) for x in job.target_labels],
        "images": [torch.from_numpy(np.ascontiguousarray(x)) for x in job.images],
        "relevance": [
            {**{f.name: getattr(r, f.name) for f in fields(r)}, "matrix": torch.from_numpy(r.matrix.copy())}
            for r in job.relevance
        ],
        "token_ids": [None if x is None else torch.from_numpy(np.array(x)) for x in job.token_ids],
    }


def job_from_state(state: dict[str, Any]) -> Job:
    known = (SDPAInputs, MHAInputs, SoftmaxOutput, ScoresInputs, WindowInputs, BandInputs, BlockSparseInputs)
    kinds = {cls.__name__: cls for cls in known}
    pending = tuple(
        Pending(
            **{k: v for k, v in p.items() if k not in ("kind", "inputs")},
            inputs=kinds[p["kind"]](**p["inputs"]),
        )
        for p in state["pending"]
    )
    return Job(
        step=state["step"],
        epoch=state["epoch"],
        pending=pending,
        diagnose=state["diagnose"],
        labels=tuple(None if x is None else tuple(x) for x in state["labels"]),
        target_labels=tuple(None if x is None else tuple(x) for x in state.get("target_labels", ())),
        images=tuple(x.numpy() for x in state["images"]),
        relevance=tuple(
            RelevanceMap(**{**r, "matrix": r["matrix"].numpy(), "layers": tuple(r["layers"])})
            for r in state.get("relevance", [])
        ),
        token_ids=tuple(None if x is None else x.numpy() for x in state.get("token_ids", [])),
    )


# -- messages between the two processes ----------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    """Start (or restart, in a new drawing process) one monitor's pipeline and sinks."""

    channel: int
    setup: Setup
    state: dict[str, Any] | None  # the pipeline's state to go on from (a checkpoint, a dead process)
    tensorboard_dir: str | None  # where the drawing process writes its event file (None: nowhere)


@dataclass(frozen=True)
class Draw:
    """Draw one capture; ``spool`` names the file that keeps it beside the logs until it is drawn."""

    channel: int
    job_id: int
    job: Job
    want_outputs: bool  # whether the training process writes other loggers from the outputs
    spool: str | None = None


@dataclass(frozen=True)
class Spool:
    """Write a capture already sent, and not yet drawn, to ``path`` (a checkpoint lists it)."""

    channel: int
    job_id: int
    path: str


@dataclass(frozen=True)
class Close:
    """Close a monitor's sinks after the captures sent before; always answered by :class:`Closed`."""

    channel: int
    request: int


@dataclass(frozen=True)
class Ping:
    request: int


@dataclass(frozen=True)
class Hurry:
    """Training has ended and waits for the drawing: draw what is left at the training process's
    own priority rather than below it (``now=False``: training runs again)."""

    now: bool = True


@dataclass(frozen=True)
class Done:
    """One capture drawn (or failed): what other loggers need, warnings, and the state after it."""

    channel: int
    job_id: int
    outputs: Outputs | None
    messages: tuple[str, ...]
    seconds: float  # CPU seconds the drawing took
    state: dict[str, Any] | None  # the pipeline's state after this capture (None: unchanged)


@dataclass(frozen=True)
class Closed:
    channel: int
    request: int
    messages: tuple[str, ...] = ()  # why closing failed, if it did


@dataclass(frozen=True)
class Pong:
    request: int


ToDrawing = Open | Draw | Spool | Close | Ping | Hurry
FromDrawing = Done | Closed | Pong
