"""The arrow view: queries left, keys right, a line from each query to its strongest keys."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from lightning_attnviz.render import layout
from lightning_attnviz.render.layout import Canvas, image_only
from lightning_attnviz.render.scale import _LABEL, _PAD, UNIFORM_AT, _bounded, _notes, levels

LINE_RGB = (31, 90, 170)


def draw_arrows(
    weights: np.ndarray,
    q_labels: Sequence[str],
    k_labels: Sequence[str],
    title: layout.Title,
    top_k: int = 3,
    note: str = "",
    visible: np.ndarray | None = None,
) -> Canvas:
    """Which token attends to which: queries left, keys right, a line from each query to its
    ``top_k`` keys, more opaque the more it exceeds uniform (bertviz's head view, as a static image);
    in its layout ``boxes["lines"]`` is the band the lines cross.

    Shape:
        weights, visible: ``(q, k)``.
    """
    weights, visible, q_labels, k_labels = _bounded(weights, visible, q_labels, k_labels)
    q_len, k_len = weights.shape
    row = int(np.clip(240 // max(q_len, k_len), 3, 18))
    every = layout.stride(row)
    q_w = max((layout.width(t, _LABEL) for t in q_labels[::every]), default=0)
    k_w = max((layout.width(t, _LABEL) for t in k_labels[::every]), default=0)
    band = 220
    x0 = max(_PAD + q_w + 6, 60)
    width = max(x0 + band + 6 + k_w + _PAD, 480)
    k = min(top_k, k_len)
    foot, foot_h = layout.footer(
        _notes(
            f"top {k} keys per query; opacity = how far above uniform (1/n) the weight is, none at uniform",
            note,
        ),
        width,
    )
    top = layout.header_height(title, width) + layout.line_height(_LABEL)
    height = top + max(q_len, k_len) * row + foot_h + 4
    canvas = Canvas(height, width)
    # opacity: how far above uniform the weight is, so a uniform row draws no line at all
    level = np.nan_to_num((levels(weights, visible) - UNIFORM_AT) / (1 - UNIFORM_AT))
    order = np.argsort(-np.where(np.isfinite(weights), weights, -1), axis=1, kind="stable")[:, :k]
    ends = sorted(
        (float(level[i, j]), i, int(j)) for i in range(q_len) for j in order[i] if level[i, j] > 0.02
    )
    mask = Image.new("L", (2 * band, 2 * max(q_len, k_len) * row))  # drawn at 2x, averaged: antialiased
    draw = ImageDraw.Draw(mask)
    for alpha, i, j in ends:  # weakest first: where lines cross, the stronger one shows
        draw.line(
            [(0, (2 * i + 1) * row), (2 * band - 1, (2 * j + 1) * row)], fill=round(255 * alpha), width=3
        )
    canvas.ink(np.asarray(mask.reduce(2)), x0, top, LINE_RGB)
    lines = tuple((x0, top + (i + 0.5) * row, x0 + band, top + (j + 0.5) * row, a) for a, i, j in ends)
    canvas.segments.append(layout.Segments(lines, LINE_RGB, 1.5))
    canvas.boxes["lines"] = layout.Box(x0, top, band, mask.height)
    for i in range(0, q_len, every):
        canvas.text(q_labels[i], x0 - 6, top + (i + 0.5) * row, _LABEL, anchor="rm")
    for j in range(0, k_len, every):
        canvas.text(k_labels[j], x0 + band + 6, top + (j + 0.5) * row, _LABEL, anchor="lm")
    canvas.text("query", x0 - 6, top - 2, _LABEL, anchor="rb", color=layout.GRAY)
    canvas.text("key", x0 + band + 6, top - 2, _LABEL, anchor="lb", color=layout.GRAY)
    return layout.finish(canvas, title, foot)


arrows = image_only(draw_arrows)
