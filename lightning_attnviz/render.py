"""Draw attention views as ``uint8`` RGB arrays, shape ``(H, W, 3)`` (TensorBoard's ``HWC``).

Pictures are composed as numpy arrays with :mod:`lightning_attnviz.layout` (text rasterised once and
cached, no matplotlib artists), so a 64-token heatmap costs milliseconds, not the 0.4 s matplotlib's
per-label text draws took, and nothing global is touched: safe on any thread.

Colour scale: a cell shows its share of the row's weight against uniform, ``1/n`` over the row's
``n`` visible keys, on a log scale with base ``n``: ``v = 1 + log(w) / log(n)`` is 1 for one-hot, 0 for
uniform and -1 for ``1/n²``. Uniform sits at a fixed, calm colour (:data:`UNIFORM_RGB`), peaked rows turn
yellow, ignored keys dark. The scale has no free parameter, so every tile of a grid, every panel of a
strip and every frame of a GIF is on the same scale by construction, and a causal map's short early
rows read as they should (one key of one is not "hot", one key of 64 is).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from PIL import Image, ImageDraw

from lightning_attnviz import layout
from lightning_attnviz.layout import Canvas
from lightning_attnviz.reduce import AttentionView

CMAP = "viridis"
MASKED_RGB = (215, 215, 215)  # hidden positions (padding, causal future): light gray, not a weight
UNIFORM_AT = 0.4  # where uniform sits on the colormap: a calm blue, clear of both ends
MAX_CELLS = 128  # rows/columns drawn at most; longer axes are block-pooled for display
MAX_LABEL = 16  # characters of a token label drawn
_LUT = (matplotlib.colormaps[CMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
_DIFF_LUT = (matplotlib.colormaps["RdBu_r"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
UNIFORM_RGB = tuple(int(c) for c in _LUT[round(UNIFORM_AT * 255)])
TOP_RGB = tuple(int(c) for c in _LUT[255])
TICKS = ((1.0, "1  one-hot"), (UNIFORM_AT + (1 - UNIFORM_AT) / 2, "1/√n"), (UNIFORM_AT, "1/n  uniform"),
         (UNIFORM_AT / 2, "1/n√n"), (0.0, "≤ 1/n²"))  # fmt: skip
SCALE_NOTE = "colour: share of the row's weight vs. uniform 1/n (n = visible keys in the row), log scale"
_PAD, _LABEL = layout.PAD, layout.LABEL
_BAR = (_LUT, TICKS)


def levels(weights: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Position on the colormap, ``0..1``, of each weight; NaN where hidden or not finite.

    Shape:
        weights: ``(..., q, k)``; visible broadcastable to it.
    """
    w = np.asarray(weights, dtype=np.float64)
    hidden = ~np.isfinite(w) if visible is None else ~np.isfinite(w) | ~np.asarray(visible, dtype=bool)
    w = np.where(hidden, 0.0, np.maximum(w, 0.0))
    n = (~hidden).sum(axis=-1, keepdims=True)
    total = w.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):  # thread-local, unlike warnings filters
        share = np.where(total > 0, w / total, 0.0)
        v = np.where(n > 1, 1 + np.log(share) / np.log(np.maximum(n, 2)), np.where(share > 0, 1.0, -1.0))
    t = np.where(v < 0, (v + 1) * UNIFORM_AT, UNIFORM_AT + v * (1 - UNIFORM_AT))
    return np.where(hidden, np.nan, np.clip(t, 0.0, 1.0))


def colorize(weights: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Weights → RGB on the uniform-relative scale; hidden and non-finite cells :data:`MASKED_RGB`.

    Shape:
        weights: ``(..., q, k)``; returns ``(..., q, k, 3)`` uint8.
    """
    t = levels(weights, visible)
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
    weights: np.ndarray, visible: np.ndarray | None, labels: Sequence[str], axis: int
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Block-pool ``axis`` (-2 queries: mean, -1 keys: sum, as ``reduce.pool_view``) to at most
    :data:`MAX_CELLS`, so no input makes a picture unbounded; labels cleaned, one per kept block."""
    size = weights.shape[axis]
    labels = list(labels) if len(labels) == size else [str(i) for i in range(size)]
    block = math.ceil(size / MAX_CELLS)
    if block > 1:

        def pool(a: np.ndarray, reduce) -> np.ndarray:
            a = np.moveaxis(a, axis, -1)
            a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, -size % block)])
            return np.moveaxis(reduce(a.reshape(*a.shape[:-1], -1, block), axis=-1), -1, axis)

        if visible is not None:
            visible = pool(np.broadcast_to(visible, weights.shape), np.any)
        weights = pool(weights, np.mean if axis == -2 else np.sum)
        labels = [f"{labels[i]}…" for i in range(0, size, block)]
    return weights, visible, [_clean(label) for label in labels]


def _bounded(weights, visible, q_labels, k_labels):
    weights, visible, q_labels = _bound(np.asarray(weights, dtype=np.float32), visible, q_labels, -2)
    weights, visible, k_labels = _bound(weights, visible, k_labels, -1)
    return weights, visible, q_labels, k_labels


def draw_heatmap(
    weights: np.ndarray,
    visible: np.ndarray | None,
    q_labels: Sequence[str],
    k_labels: Sequence[str],
    title: layout.Title,
    note: str = "",
) -> Canvas:
    """:func:`heatmap` with its layout: ``boxes["map"]`` is the map area, one ``cell`` per token,
    and ``texts`` the strings as drawn."""
    weights, visible, q_labels, k_labels = _bounded(weights, visible, q_labels, k_labels)
    q_len, k_len = weights.shape
    cell = int(np.clip(704 // max(q_len, k_len), 6, 28))
    every = layout.stride(cell)
    label_w = max((layout.width(t, _LABEL) for t in q_labels[::every] + k_labels[::every]), default=0)
    caption = layout.line_height(_LABEL)
    map_x = _PAD + caption + 4 + label_w + 4
    width = max(map_x + k_len * cell + 14 + layout.colorbar_width(TICKS) + _PAD, 480)
    top = layout.header_height(title, width)
    foot, foot_h = layout.footer(f"{_notes(note, masked=visible is not None)}\n{SCALE_NOTE}", width)
    map_h, bar_h = q_len * cell, max(q_len * cell, 160)
    below = 4 + label_w + 4 + caption
    canvas = Canvas(top + max(map_h, bar_h) + below + foot_h, width)
    canvas.paste(layout.scale_up(colorize(weights, visible), cell), map_x, top, "map")
    for i in range(0, q_len, every):
        canvas.text(q_labels[i], map_x - 4, top + (i + 0.5) * cell, _LABEL, anchor="rm")
    for j in range(0, k_len, every):
        canvas.text(k_labels[j], map_x + (j + 0.5) * cell, top + map_h + 4, _LABEL, anchor="ct", rotate=True)
    canvas.text("query", _PAD, top + map_h / 2, _LABEL, anchor="lm", rotate=True, color=layout.GRAY)
    canvas.text("key", map_x + k_len * cell / 2, top + map_h + below, _LABEL, anchor="cb", color=layout.GRAY)
    layout.colorbar(canvas, _LUT, map_x + k_len * cell + 14, top, bar_h, TICKS)
    return layout.finish(canvas, title, foot)


def heatmap(
    weights: np.ndarray,
    visible: np.ndarray | None,
    q_labels: Sequence[str],
    k_labels: Sequence[str],
    title: layout.Title,
    note: str = "",
) -> np.ndarray:
    """Query rows × key columns of one map, labelled with the tokens, with a colorbar.

    Args:
        title: a string (wrapped) or one line per item (each shortened in the middle to fit).

    Shape:
        weights, visible: ``(q, k)``; returns ``(H, W, 3)`` uint8.
    """
    return draw_heatmap(weights, visible, q_labels, k_labels, title, note).image


def _notes(*parts: str, masked: bool = False) -> str:
    return "; ".join([p for p in parts if p] + (["gray = masked"] if masked else []))


def _head_visible(view: AttentionView, head: int) -> np.ndarray | None:
    if view.visible is None:
        return None
    return view.visible[head if view.visible.shape[0] > 1 else 0]


def draw_head_grid(view: AttentionView, title: layout.Title) -> Canvas:
    """:func:`head_grid` with its layout (``boxes[f"tile {h}"]``, the mean last)."""
    mean, mean_visible = view.head_mean()
    weights, visible, q_labels, k_labels = _bounded(
        np.concatenate([view.weights, mean[None]]),
        None if view.visible is None else np.concatenate(
            [np.broadcast_to(view.visible, view.weights.shape), mean_visible[None]]),
        view.q_labels, view.k_labels,
    )  # fmt: skip
    tiles = list(colorize(weights, visible))
    names = [[f"head {h}"] for h in range(view.heads)] + [["mean"]]
    cell = int(np.clip(200 // max(weights.shape[-2:]), 1, 24))
    note = _notes(view.note, SCALE_NOTE, masked=view.visible is not None)
    cols = math.ceil(math.sqrt(len(tiles)))
    return layout.grid(tiles, names, cols, title, note, cell, (), q_labels, k_labels, _BAR)


def head_grid(view: AttentionView, title: layout.Title) -> np.ndarray:
    """Every head of one layer plus the head mean, labelled, all on the one uniform-relative scale."""
    return draw_head_grid(view, title).image


def _common_prefix(names: Sequence[str]) -> str:
    """The shared dotted prefix of module names (``model.bert.encoder.layer.``), whole parts only."""
    if len(names) < 2:
        return ""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix[: prefix.rfind(".") + 1]


def draw_atlas(views: Sequence[AttentionView], title: layout.Title) -> Canvas:
    """:func:`atlas` with its layout; row names drop the layers' common dotted prefix."""
    heads = max(v.heads for v in views)
    tiles: list[np.ndarray | None] = []
    for view in views:
        weights, visible, _, _ = _bounded(view.weights, view.visible, view.q_labels, view.k_labels)
        tiles += [*colorize(weights, visible), *[None] * (heads - view.heads)]
    names = [[f"head {h}"] if i < heads else [] for i, h in enumerate(list(range(heads)) * len(views))]
    prefix = _common_prefix([v.layer for v in views])
    rows = [layout.fit(v.layer[len(prefix) :], _LABEL, 220) for v in views]
    notes = sorted({v.note for v in views if v.note})
    masked = any(v.visible is not None for v in views)
    note = _notes(f"layers {prefix}*" if prefix else "", *notes, SCALE_NOTE, masked=masked)
    cell = int(np.clip(64 // max(t.shape[0] for t in tiles if t is not None), 1, 12))
    return layout.grid(tiles, names, heads, title, note, cell, rows, bar=_BAR)


def atlas(views: Sequence[AttentionView], title: layout.Title) -> np.ndarray:
    """Every layer (rows) × head (columns) of one sample, to see the whole model at a glance."""
    return draw_atlas(views, title).image


@dataclass(frozen=True)
class Strip:
    """The evolution of one sample's layer: head-mean ``(q, k)`` float32 maps, oldest first, with the
    step and epoch of each capture."""

    maps: Sequence[np.ndarray]
    steps: Sequence[int]
    epochs: Sequence[int]


MAX_STRIP = 12  # panels drawn at most (the newest)


def draw_evolution(strip: Strip, visible: np.ndarray | None, title: layout.Title, note: str = "") -> Canvas:
    """:func:`evolution` with its layout; panel ``i`` at ``boxes[f"tile {i}"]``, the Δ last."""
    maps, steps, epochs = (list(x)[-MAX_STRIP:] for x in (strip.maps, strip.steps, strip.epochs))
    tiles, names = [], []
    for m, step, epoch in zip(maps, steps, epochs, strict=True):
        weights, shown, _, _ = _bounded(m, visible, [], [])
        tiles.append(colorize(weights, shown))
        names.append([f"step {step}", f"ep {epoch}"])
    cell = int(np.clip(144 // max(tiles[0].shape[:2]), 2, 18))
    scale = SCALE_NOTE
    if len(maps) > 1:
        diff, shown, _, _ = _bounded(maps[-1] - maps[-2], visible, [], [])
        span = max(float(np.abs(np.nan_to_num(diff)).max()), 1e-6)
        tiles.append(_colorize_diff(diff, shown, span))
        names.append(["Δ step", f"{steps[-2]}→{steps[-1]}"])
        scale += f"; Δ: weight change, red = more, blue = less, white = same (±{span:.2g})"
    names = [[layout.fit(n, _LABEL, len(tiles[0][0]) * cell) for n in lines] for lines in names]
    note = _notes(note, scale, masked=visible is not None)
    return layout.grid(tiles, names, len(tiles), title, note, cell, bar=_BAR)


def evolution(strip: Strip, visible: np.ndarray | None, title: layout.Title, note: str = "") -> np.ndarray:
    """The same map at successive captures on one scale, then the change since the previous capture.

    Shape:
        strip.maps: each ``(q, k)``; visible: ``(q, k)`` or ``None``.
    """
    return draw_evolution(strip, visible, title, note).image


def draw_arrows(
    weights: np.ndarray,
    q_labels: Sequence[str],
    k_labels: Sequence[str],
    title: layout.Title,
    top_k: int = 3,
    note: str = "",
    visible: np.ndarray | None = None,
) -> Canvas:
    """:func:`arrows` with its layout (``boxes["lines"]`` is the band the lines cross)."""
    weights, visible, q_labels, k_labels = _bounded(weights, visible, q_labels, k_labels)
    q_len, k_len = weights.shape
    row = int(np.clip(768 // max(q_len, k_len), 6, 24))
    every = layout.stride(row)
    q_w = max((layout.width(t, _LABEL) for t in q_labels[::every]), default=0)
    k_w = max((layout.width(t, _LABEL) for t in k_labels[::every]), default=0)
    band = 300
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
    canvas.blend(np.asarray(mask.reduce(2)), x0, top, (31, 90, 170))
    canvas.boxes["lines"] = layout.Box(x0, top, band, mask.height)
    for i in range(0, q_len, every):
        canvas.text(q_labels[i], x0 - 6, top + (i + 0.5) * row, _LABEL, anchor="rm")
    for j in range(0, k_len, every):
        canvas.text(k_labels[j], x0 + band + 6, top + (j + 0.5) * row, _LABEL, anchor="lm")
    canvas.text("query", x0 - 6, top - 2, _LABEL, anchor="rb", color=layout.GRAY)
    canvas.text("key", x0 + band + 6, top - 2, _LABEL, anchor="lb", color=layout.GRAY)
    return layout.finish(canvas, title, foot)


def arrows(
    weights: np.ndarray,
    q_labels: Sequence[str],
    k_labels: Sequence[str],
    title: layout.Title,
    top_k: int = 3,
    note: str = "",
) -> np.ndarray:
    """Which token attends to which: queries left, keys right, a line from each query to its
    ``top_k`` keys, more opaque the more it exceeds uniform (bertviz's head view, as a static image).

    Shape:
        weights: ``(q, k)``.
    """
    return draw_arrows(weights, q_labels, k_labels, title, top_k, note).image


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 picture.

    zlib level 1 without PIL's ``optimize``: our pictures are flat colour and white space, which even
    the fastest level compresses to within ~20 % of level 6 at a fifth of the time (see
    ``benchmarks/bench_render.py``); level 0 would make event files several times larger.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


PLOT_KINDS: tuple[str, ...] = ("heatmap", "heads", "arrows", "atlas", "evolution")


@dataclass(frozen=True)
class Picture:
    """A rendered image and what it shows; ``layer`` is ``None`` for a whole-model atlas and ``head``
    is ``None`` for the head mean."""

    kind: str
    sample: int
    layer: str | None
    image: np.ndarray
    head: int | None = None


def render_views(
    views: Sequence[AttentionView],
    step: int,
    plots: Sequence[str] = PLOT_KINDS,
    heads: Sequence[int] = (),
    top_k: int = 3,
    strips: Mapping[tuple[int, str], Strip] | None = None,
) -> list[Picture]:
    """Every requested picture of every view, in sample then forward order.

    Args:
        views: reduced maps of the fixed samples.
        step: the training step, shown in titles.
        plots: which of :data:`PLOT_KINDS`.
        heads: heads that also get their own token-labelled heatmap.
        top_k: keys per query in the arrow view.
        strips: for ``"evolution"``, per ``(sample, layer)`` the past head-mean maps with their steps.
    """
    pictures = []
    for view in views:
        mean, mean_visible = view.head_mean()
        where = f"sample {view.sample} · step {step}"
        if "heatmap" in plots:
            image = heatmap(
                mean,
                mean_visible,
                view.q_labels,
                view.k_labels,
                (view.layer, f"{where} · head mean"),
                view.note,
            )
            pictures.append(Picture("heatmap", view.sample, view.layer, image))
        for h in heads:
            if h < view.heads:
                title = (view.layer, f"{where} · head {h}")
                image = heatmap(
                    view.weights[h], _head_visible(view, h), view.q_labels, view.k_labels, title, view.note
                )
                pictures.append(Picture("heatmap", view.sample, view.layer, image, head=h))
        if "heads" in plots:
            image = head_grid(view, (view.layer, f"{where} · {view.heads} heads and their mean"))
            pictures.append(Picture("heads", view.sample, view.layer, image))
        if "arrows" in plots:
            image = arrows(
                mean, view.q_labels, view.k_labels, (view.layer, f"{where} · head mean"), top_k, view.note
            )
            pictures.append(Picture("arrows", view.sample, view.layer, image))
        strip = (strips or {}).get((view.sample, view.layer))
        if "evolution" in plots and strip is not None and len(strip.maps):
            title = (view.layer, f"sample {view.sample} · head mean over the last {len(strip.maps)} captures")
            image = evolution(strip, mean_visible, title, view.note)
            pictures.append(Picture("evolution", view.sample, view.layer, image))
    if "atlas" in plots:
        for sample in sorted({v.sample for v in views}):
            of_sample = [v for v in views if v.sample == sample]
            pictures.append(
                Picture("atlas", sample, None, atlas(of_sample, f"sample {sample} · step {step}"))
            )
    return pictures
