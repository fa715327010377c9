"""Draw attention views as ``uint8`` RGB arrays, shape ``(H, W, 3)`` (TensorBoard's ``HWC``).

Pictures are composed as numpy arrays with :mod:`lightning_attnviz.render.layout` (text rasterised once and
cached, no matplotlib artists), so a 64-token heatmap costs milliseconds, not the 0.4 s matplotlib's
per-label text draws took, and nothing global is touched: safe on any thread.

Colour scale: a cell's share of the row's weight against uniform, on a log scale (see
:mod:`lightning_attnviz.render.scale`; the arrow view is :mod:`lightning_attnviz.render.arrows`'s).
The scale has no free parameter, so every tile of a grid, every panel of a strip and every frame of a
GIF is on the same scale by construction, and a causal map's short early rows read as they should (one
key of one is not "hot", one key of 64 is).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lightning_attnviz.analysis.history import Strip
from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.render import layout
from lightning_attnviz.render.arrows import arrows
from lightning_attnviz.render.arrows import draw_arrows as draw_arrows
from lightning_attnviz.render.layout import Canvas, image_only
from lightning_attnviz.render.plots import TOKEN_PLOTS
from lightning_attnviz.render.scale import (
    _BAR,
    _LABEL,
    _LUT,
    _PAD,
    MAX_CELLS,
    SCALE_NOTE,
    TICKS,
    _bounded,
    _colorize_diff,
    _notes,
    colorize,
)
from lightning_attnviz.render.scale import MASKED_RGB as MASKED_RGB
from lightning_attnviz.render.scale import TOP_RGB as TOP_RGB
from lightning_attnviz.render.scale import UNIFORM_AT as UNIFORM_AT
from lightning_attnviz.render.scale import UNIFORM_RGB as UNIFORM_RGB
from lightning_attnviz.render.scale import levels as levels

# Sizes for TensorBoard's cards: the Images dashboard shows a picture 350 px wide, Time Series fits it
# into about 388 × 215 px. Pictures about 500 × 340 px then show their 15 px text at 9–10 px.
MAP_SIDE = 200  # pixels a heatmap's longer side is scaled towards (whole cells, 2–24 px each)
GRID_WIDTH = 380  # pixels the tiles of a head grid share, side by side
GRID_TILE = 64  # cells a side of a head grid's tiles when there are more than 6
ATLAS_WIDTH, ATLAS_HEIGHT = 400, 300  # pixels the head columns and the layer rows of an atlas share
STRIP_TILE = 72  # pixels a panel of the evolution strip is scaled towards


def draw_heatmap(
    weights: np.ndarray,
    visible: np.ndarray | None,
    q_labels: Sequence[str],
    k_labels: Sequence[str],
    title: layout.Title,
    note: str = "",
    key_sizes: np.ndarray | None = None,
) -> Canvas:
    """Query rows × key columns of one map, labelled with the tokens, with a colorbar; in its layout
    ``boxes["map"]`` is the map area, one ``cell`` per token, and ``texts`` the strings as drawn.

    Args:
        title: a string (wrapped) or one line per item (each shortened in the middle to fit).
        key_sizes: tokens per key column of a pooled map (coloured per token, see ``scale.levels``).

    Shape:
        weights, visible: ``(q, k)``.
    """
    columns = np.shape(weights)[-1]
    weights, visible, q_labels, k_labels = _bounded(weights, visible, q_labels, k_labels)
    key_sizes = _kept(key_sizes, columns, weights)
    q_len, k_len = weights.shape
    cell = int(np.clip(MAP_SIDE // max(q_len, k_len), 2, 24))
    every = layout.stride(cell)
    label_w = max((layout.width(t, _LABEL) for t in q_labels[::every] + k_labels[::every]), default=0)
    caption = layout.line_height(_LABEL)
    map_x = _PAD + caption + 4 + label_w + 4
    width = max(map_x + k_len * cell + 14 + layout.colorbar_width(TICKS) + _PAD, 360)
    top = layout.header_height(title, width)
    note = _notes(note, PER_TOKEN if key_sizes is not None else "", masked=visible is not None)
    foot, foot_h = layout.footer(f"{note}\n{SCALE_NOTE}", width)
    map_h, bar_h = q_len * cell, max(q_len * cell, 150)
    below = 4 + label_w + 4 + caption
    canvas = Canvas(top + max(map_h, bar_h) + below + foot_h, width)
    canvas.paste(layout.scale_up(colorize(weights, visible, key_sizes), cell), map_x, top, "map")
    for i in range(0, q_len, every):
        canvas.text(q_labels[i], map_x - 4, top + (i + 0.5) * cell, _LABEL, anchor="rm")
    for j in range(0, k_len, every):
        canvas.text(k_labels[j], map_x + (j + 0.5) * cell, top + map_h + 4, _LABEL, anchor="ct", rotate=True)
    canvas.text("query", _PAD, top + map_h / 2, _LABEL, anchor="lm", rotate=True, color=layout.GRAY)
    canvas.text("key", map_x + k_len * cell / 2, top + map_h + below, _LABEL, anchor="cb", color=layout.GRAY)
    layout.colorbar(canvas, _LUT, map_x + k_len * cell + 14, top, bar_h, TICKS)
    return layout.finish(canvas, title, foot)


heatmap = image_only(draw_heatmap)


def _kept(sizes: np.ndarray | None, columns: int, weights: np.ndarray) -> np.ndarray | None:
    """Key sizes for the columns drawn; ``None`` when the picture bound pooled the columns again."""
    return sizes if sizes is not None and weights.shape[-1] == columns else None


def _key_sizes(view: AttentionView) -> np.ndarray | None:
    """Tokens per key column of a pooled view; ``None`` when each column is one token."""
    return None if view.pooling is None or not view.pooling[1].pooled else view.pooling[1].sizes


def _head_visible(view: AttentionView, head: int) -> np.ndarray | None:
    if view.visible is None:
        return None
    return view.visible[head if view.visible.shape[0] > 1 else 0]


def draw_head_grid(view: AttentionView, title: layout.Title) -> Canvas:
    """Every head of one layer plus the head mean, labelled, all on the one uniform-relative scale;
    in its layout ``boxes[f"tile {h}"]``, the mean last."""
    mean, mean_visible = view.head_mean()
    limit = GRID_TILE if view.heads + 1 > 6 else MAX_CELLS  # many heads: tiles a card can hold
    weights, visible, q_labels, k_labels = _bounded(
        np.concatenate([view.weights, mean[None]]),
        None if view.visible is None or mean_visible is None else np.concatenate(
            [np.broadcast_to(view.visible, view.weights.shape), mean_visible[None]]),
        view.q_labels, view.k_labels, limit,
    )  # fmt: skip
    sizes = _kept(_key_sizes(view), view.weights.shape[-1], weights)
    tiles = list(colorize(weights, visible, sizes))
    names = [[f"head {h}"] for h in range(view.heads)] + [["mean"]]
    # one row of up to 6 tiles, as wide as TensorBoard's cards; at least 2 px a cell, then fewer columns
    size = max(weights.shape[-2:])
    cell = int(np.clip((GRID_WIDTH // min(len(tiles), 6) - 10) // size, 1, 16))
    cols = max(1, min(len(tiles), (GRID_WIDTH + 140) // (cell * size + 10)))
    smaller = size < max(view.weights.shape[-2:])
    pooled = f"tiles pooled to {size} cells a side for the page" if smaller else ""
    per_token = PER_TOKEN if sizes is not None else ""
    note = _notes(view.note, per_token, pooled, SCALE_NOTE, masked=view.visible is not None)
    return layout.grid(tiles, names, cols, title, note, cell, (), q_labels, k_labels, _BAR)


head_grid = image_only(draw_head_grid)


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
    """Every layer (rows) × head (columns) of one sample, to see the whole model at a glance; row
    names drop the layers' common dotted prefix."""
    heads = max(v.heads for v in views)
    # pixels a tile gets: a row of heads fits a card's width, the column of layers its height
    side = int(np.clip(min(ATLAS_WIDTH // heads, ATLAS_HEIGHT // len(views)) - 10, 16, 64))
    tiles: list[np.ndarray | None] = []
    pooled = per_token = False
    for view in views:
        weights, visible, _, _ = _bounded(view.weights, view.visible, view.q_labels, view.k_labels, side)
        pooled |= weights.shape[-1] < view.weights.shape[-1] or weights.shape[-2] < view.weights.shape[-2]
        sizes = _kept(_key_sizes(view), view.weights.shape[-1], weights)
        per_token |= sizes is not None
        tiles += [*colorize(weights, visible, sizes), *[None] * (heads - view.heads)]
    size = max(t.shape[0] for t in tiles if t is not None)
    cell = int(np.clip(round(side / size), 1, 12))
    wide = cell * size + 8 >= layout.width(f"head {heads - 1}", _LABEL)
    head_names = [[f"head {h}" if wide else str(h)] for h in range(heads)]  # numbers fit narrow tiles
    names = [head_names[h] if i < heads else [] for i, h in enumerate(list(range(heads)) * len(views))]
    prefix = _common_prefix([v.layer for v in views])
    rows = [layout.fit(v.layer[len(prefix) :], _LABEL, 220) for v in views]
    notes = sorted({v.note for v in views if v.note})
    masked = any(v.visible is not None for v in views)
    shown = f"tiles pooled to {side} cells a side for the page" if pooled else ""
    note = _notes(f"layers {prefix}*" if prefix else "", "" if wide else "columns: heads", *notes,
                  PER_TOKEN if per_token else "", shown, SCALE_NOTE, masked=masked)  # fmt: skip
    return layout.grid(tiles, names, heads, title, note, cell, rows, bar=_BAR)


atlas = image_only(draw_atlas)


MAX_STRIP = 12  # panels drawn at most (the newest)
STRIP_ROW = 5  # panels a row of the evolution strip holds: more wrap, so the strip reads on a card


def draw_evolution(
    strip: Strip,
    visible: np.ndarray | None,
    title: layout.Title,
    note: str = "",
    key_sizes: np.ndarray | None = None,
) -> Canvas:
    """The same map at successive captures on one scale, then the change since the previous capture;
    in its layout panel ``i`` is at ``boxes[f"tile {i}"]``, the Δ last.

    Shape:
        strip.maps: each ``(q, k)``; visible: ``(q, k)`` or ``None``; key_sizes: ``(k,)``.
    """
    maps: list[np.ndarray] = list(strip.maps)[-MAX_STRIP:]
    steps, epochs = (list(x)[-MAX_STRIP:] for x in (strip.steps, strip.epochs))
    tiles, names = [], []
    for m, step, epoch in zip(maps, steps, epochs, strict=True):
        weights, shown, _, _ = _bounded(m, visible, [], [], STRIP_TILE)
        tiles.append(colorize(weights, shown, _kept(key_sizes, m.shape[-1], weights)))
        names.append([f"step {step}", f"ep {epoch}"])
    cell = int(np.clip(STRIP_TILE // max(tiles[0].shape[:2]), 1, 12))
    scale = SCALE_NOTE
    if max(maps[0].shape) > STRIP_TILE:
        scale = f"pooled to {STRIP_TILE} cells a side for the page; {scale}"
    if len(maps) > 1:
        diff, shown, _, _ = _bounded(maps[-1] - maps[-2], visible, [], [], STRIP_TILE)
        span = max(float(np.abs(np.nan_to_num(diff)).max()), 1e-6)
        tiles.append(_colorize_diff(diff, shown, span))
        names.append(["Δ step", f"{steps[-2]}→{steps[-1]}"])
        scale += f"; Δ: red = more weight, blue = less (±{span:.2g})"
    names = [[layout.fit(n, _LABEL, len(tiles[0][0]) * cell + 8) for n in lines] for lines in names]
    note = _notes(note, PER_TOKEN if key_sizes is not None else "", scale, masked=visible is not None)
    return layout.grid(tiles, names, min(len(tiles), STRIP_ROW), title, note, cell, bar=_BAR)


evolution = image_only(draw_evolution)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 picture.

    Written directly: rows unfiltered (filter type 0) and zlib level 1. Our pictures are flat colour,
    glyphs and white space, which that compresses within ~1.5× of PIL's adaptive filtering at level 6,
    about 3× faster than PIL at level 1 (PIL tries every row filter); zlib releases the GIL meanwhile.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    rows = np.zeros((height, 1 + width * 3), dtype=np.uint8)  # a leading 0 per row: no filter
    rows[:, 1:] = image.reshape(height, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    pixels = zlib.compress(rows.tobytes(), 1)
    return _PNG + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


_PNG = b"\x89PNG\r\n\x1a\n"


# said in a pooled picture's note: a block's colour is its weight per token (see ``scale.levels``)
PER_TOKEN = "a pooled key is coloured by its weight per token"


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
    plots: Sequence[str] = TOKEN_PLOTS,
    heads: Sequence[int] = (),
    top_k: int = 3,
    strips: Mapping[tuple[int, str], Strip] | None = None,
) -> list[Picture]:
    """Every requested picture of every view, in sample then forward order.

    Args:
        views: reduced maps of the fixed samples.
        step: the training step, shown in titles.
        plots: which of :data:`~lightning_attnviz.render.plots.TOKEN_PLOTS`.
        heads: heads that also get their own token-labelled heatmap.
        top_k: keys per query in the arrow view.
        strips: for ``"evolution"``, per ``(sample, layer)`` the past head-mean maps with their steps.
    """
    pictures = []
    for view in views:
        mean, mean_visible = view.head_mean()
        sizes = _key_sizes(view)
        where = f"sample {view.sample} · step {step}"
        if "heatmap" in plots:
            image = heatmap(
                mean,
                mean_visible,
                view.q_labels,
                view.k_labels,
                (view.layer, f"{where} · head mean"),
                view.note,
                sizes,
            )
            pictures.append(Picture("heatmap", view.sample, view.layer, image))
        for h in heads:
            if h < view.heads:
                title = (view.layer, f"{where} · head {h}")
                shown, labels = _head_visible(view, h), (view.q_labels, view.k_labels)
                image = heatmap(view.weights[h], shown, *labels, title, view.note, sizes)
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
            image = evolution(strip, mean_visible, title, view.note, sizes)
            pictures.append(Picture("evolution", view.sample, view.layer, image))
    if "atlas" in plots:
        for sample in sorted({v.sample for v in views}):
            of_sample = [v for v in views if v.sample == sample]
            pictures.append(
                Picture("atlas", sample, None, atlas(of_sample, f"sample {sample} · step {step}"))
            )
    return pictures
