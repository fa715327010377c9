"""The plain data the drawing side receives: a :class:`Setup` once per fit and a :class:`Job` per
capture (both picklable), and a job as checkpoint state (:func:`job_state`, :func:`job_from_state`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.inputs import MHAInputs, Pending, ScoresInputs, SDPAInputs, SoftmaxOutput
from lightning_attnviz.capture.relevance import RelevanceMap
from lightning_attnviz.pipeline.settings import MonitorConfig
from lightning_attnviz.render.plots import PictureSettings
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
    }


def job_from_state(state: dict[str, Any]) -> Job:
    kinds = {cls.__name__: cls for cls in (SDPAInputs, MHAInputs, SoftmaxOutput, ScoresInputs)}
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
    )
