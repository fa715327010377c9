"""The colour scale every attention picture shares, and the bounds every picture's input is held to.

A cell shows its share of the row's weight against uniform, ``1/n`` over the row's ``n`` visible keys,
on a log scale with base ``n``: ``v = 1 + log(w) / log(n)`` is 1 for one-hot, 0 for uniform and -1 for
``1/n²``. Uniform sits at a fixed, calm colour (:data:`UNIFORM_RGB`), peaked rows turn yellow, ignored
keys dark. Axes longer than :data:`MAX_CELLS` are pooled by the one pooling rule and labels cut to
:data:`MAX_LABEL` characters before anything is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch

from lightning_attnviz.capture.blocks import PICTURE_CELLS, plan_axis, pool
from lightning_attnviz.render import layout

CMAP = "viridis"
MASKED_RGB = (215, 215, 215)  # hidden positions (padding, causal future): light gray, not a weight
UNIFORM_AT = 0.4  # where uniform sits on the colormap: a calm blue, clear of both ends
MAX_CELLS = PICTURE_CELLS  # rows/columns drawn at most; longer axes are pooled by the rule first
MAX_LABEL = 16  # characters of a token label drawn
_LUT = (matplotlib.colormaps[CMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
_DIFF_LUT = (matplotlib.colormaps["RdBu_r"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
UNIFORM_RGB = tuple(int(c) for c in _LUT[round(UNIFORM_AT * 255)])
TOP_RGB = tuple(int(c) for c in _LUT[255])
TICKS = ((1.0, "1  one-hot"), (UNIFORM_AT + (1 - UNIFORM_AT) / 2, "1/√n"), (UNIFORM_AT, "1/n  uniform"),
         (UNIFORM_AT / 2, "1/n√n"), (0.0, "≤ 1/n²"))  # fmt: skip
SCALE_NOTE = "colour: share of the row vs uniform 1/n (n visible keys), log"
_PAD, _LABEL = layout.PAD, layout.LABEL
_BAR = (_LUT, TICKS)


def levels(
    weights: np.ndarray, visible: np.ndarray | None = None, sizes: np.ndarray | None = None
) -> np.ndarray:
    """Position on the colormap, ``0..1``, of each weight; NaN where hidden or not finite.

    ``sizes``: tokens per key column of a map whose keys were pooled (summed): a cell then shows its
    share per token against ``1/n`` over the ``n`` visible tokens, so a token kept alone and a block
    of four at the same weight per token look the same.

    Shape:
        weights: ``(..., q, k)``; visible broadcastable to it; sizes ``(k,)``.
    """
    w = np.asarray(weights, dtype=np.float64)
    hidden = ~np.isfinite(w) if visible is None else ~np.isfinite(w) | ~np.asarray(visible, dtype=bool)
    w = np.where(hidden, 0.0, np.maximum(w, 0.0))
    total = w.sum(axis=-1, keepdims=True)
    if sizes is None:
        n = (~hidden).sum(axis=-1, keepdims=True)
    else:
        tokens = np.asarray(sizes, dtype=np.float64)
        n = np.where(hidden, 0.0, tokens).sum(axis=-1, keepdims=True)
        w = w / tokens
    with np.errstate(divide="ignore", invalid="ignore"):  # thread-local, unlike warnings filters
        share = np.where(total > 0, w / total, 0.0)
        v = np.where(n > 1, 1 + np.log(share) / np.log(np.maximum(n, 2)), np.where(share > 0, 1.0, -1.0))
    t = np.where(v < 0, (v + 1) * UNIFORM_AT, UNIFORM_AT + v * (1 - UNIFORM_AT))
    return np.where(hidden, np.nan, np.clip(t, 0.0, 1.0))


def colorize(
    weights: np.ndarray, visible: np.ndarray | None = None, sizes: np.ndarray | None = None
) -> np.ndarray:
    """Weights → RGB on the uniform-relative scale; hidden and non-finite cells :data:`MASKED_RGB`.

    Shape:
        weights: ``(..., q, k)``; returns ``(..., q, k, 3)`` uint8.
    """
    t = levels(weights, visible, sizes)
    rgb = _LUT[np.nan_to_num(t * 255).round().astype(np.uint8)]
    rgb[np.isnan(t)] = MASKED_RGB
    return rgb


def _colorize_diff(diff: np.ndarray, visible: np.ndarray | None, span: float) -> np.ndarray:
    """Signed change → RGB on a symmetric ±span scale, white at zero, hidden cells gray."""
    rgb = _DIFF_LUT[np.clip((np.nan_to_num(diff) / span + 1) * 127.5, 0, 255).round().astype(np.uint8)]
    if visible is not None:
        rgb[~visible] = MASKED_RGB
    return rgb


def _clean(label: str) -> str:
    """A token label as drawn: whitespace made visible, at most :data:`MAX_LABEL` characters."""
    label = str(label)[: 4 * MAX_LABEL].replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
    return layout.shorten(label, MAX_LABEL)


def _bound(
    weights: np.ndarray, visible: np.ndarray | None, labels: Sequence[str], axis: int, limit: int = MAX_CELLS
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Pool ``axis`` (-2 queries, -1 keys) to at most ``limit`` (:data:`MAX_CELLS`) by the one pooling rule
    (:func:`~lightning_attnviz.capture.pooling.plan_axis`: the first token alone, contiguous blocks),
    so no input makes a picture unbounded; labels cleaned, one per kept block. Views arrive pooled
    already (by the same rule, knowing their grid): this bounds what else is drawn."""
    size = weights.shape[axis]
    labels = list(labels) if len(labels) == size else [str(i) for i in range(size)]
    plan = plan_axis(size, limit)
    if plan.pooled:
        other = plan_axis(weights.shape[-1 if axis == -2 else -2], None)
        q, k = (plan, other) if axis == -2 else (other, plan)
        if visible is not None:
            shown = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(visible, weights.shape)))
            visible = pool(shown, q, k).numpy()
        weights = pool(torch.from_numpy(np.ascontiguousarray(weights)), q, k).numpy().astype(np.float32)
        labels = plan.labels(labels)
    return weights, visible, [_clean(label) for label in labels]


def _bounded(
    weights: np.ndarray,
    visible: np.ndarray | None,
    q_labels: Sequence[str],
    k_labels: Sequence[str],
    limit: int = MAX_CELLS,
) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str]]:
    weights, visible, q_labels = _bound(np.asarray(weights, dtype=np.float32), visible, q_labels, -2, limit)
    weights, visible, k_labels = _bound(weights, visible, k_labels, -1, limit)
    return weights, visible, q_labels, k_labels


def _notes(*parts: str, masked: bool = False) -> str:
    return "; ".join([p for p in parts if p] + (["gray = masked"] if masked else []))
