"""Draw attention views as ``uint8`` RGB arrays, shape ``(H, W, 3)`` (TensorBoard's ``HWC``).

Matplotlib's object API only (``Figure`` + ``FigureCanvasAgg``): no pyplot, no global state, so it is
safe off the main thread. Grids of many maps are composed as arrays (numpy + a colormap) and shown in
one axes: 144 axes cost about 2 s per image, one array about 20 ms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from lightning_attnviz.reduce import AttentionView

CMAP = "viridis"
MASKED_RGB = (215, 215, 215)  # hidden positions (padding, causal future): light gray, not a weight
_DPI = 100
_TILE = 72  # pixels a grid tile is scaled up towards
_LUT = (matplotlib.colormaps[CMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def heatmap(
    weights: np.ndarray,
    visible: np.ndarray | None,
    q_labels: Sequence[str],
    k_labels: Sequence[str],
    title: str,
    note: str = "",
) -> np.ndarray:
    """Query rows × key columns of one map, labelled with the tokens, with a colorbar.

    Shape:
        weights, visible: ``(q, k)``.
    """
    q_len, k_len = weights.shape
    longest = max(q_len, k_len)
    cell = 0.24 if longest <= 16 else 0.16 if longest <= 40 else 0.12  # inches per token
    fontsize = 8 if longest <= 40 else 6
    char = fontsize / 72 * 0.62  # inches per label character
    left = 0.45 + char * max(map(len, q_labels), default=1)
    bottom = 0.55 + char * max(map(len, k_labels), default=1)
    top, right = 0.45, 0.95
    width = max(left + k_len * cell + right, 3.6)
    height = max(bottom + q_len * cell + top, 2.6)
    fig = Figure(figsize=(width, height), dpi=_DPI)
    ax = fig.add_axes((left / width, bottom / height, k_len * cell / width, q_len * cell / height))
    hidden = ~np.isfinite(weights) if visible is None else ~visible | ~np.isfinite(weights)
    data = np.ma.masked_array(weights, mask=hidden)
    cmap = matplotlib.colormaps[CMAP].with_extremes(bad=np.array(MASKED_RGB) / 255)
    ax.imshow(data, cmap=cmap, vmin=0.0, vmax=_vmax(weights, visible), aspect="auto", interpolation="nearest")
    # Labels as plain text, not ticks: matplotlib's Tick objects cost ~3 ms per token.
    ax.set_xticks([])
    ax.set_yticks([])
    below, beside = ax.get_xaxis_transform(), ax.get_yaxis_transform()
    for j, label in enumerate(k_labels):
        ax.text(j, -0.012, label, transform=below, rotation=90, ha="center", va="top", fontsize=fontsize)
    for i, label in enumerate(q_labels):
        ax.text(-0.012, i, label, transform=beside, ha="right", va="center", fontsize=fontsize)
    fig.text((left + k_len * cell / 2) / width, 0.3 / height, "key", ha="center", fontsize=8)
    fig.text(
        0.12 / width, (bottom + q_len * cell / 2) / height, "query", va="center", rotation=90, fontsize=8
    )
    fig.suptitle(title, fontsize=8, y=1 - 0.08 / height, va="top")
    # A colorbar drawn by hand: fig.colorbar's tick machinery costs more than the map itself.
    vmax = _vmax(weights, visible)
    cax = fig.add_axes(
        ((left + k_len * cell + 0.12) / width, bottom / height, 0.14 / width, q_len * cell / height)
    )
    cax.imshow(_LUT[::-1, None, :], aspect="auto", interpolation="nearest")
    cax.set_xticks([])
    cax.set_yticks([])
    for frac in (0.0, 0.5, 1.0):
        cax.text(1.3, frac, f"{vmax * frac:.2g}", transform=cax.transAxes, va="center", fontsize=7)
    _footnote(fig, note, visible is not None)
    return _to_array(fig)


def head_grid(view: AttentionView, title: str) -> np.ndarray:
    """Every head of one layer plus the head mean, as tiles of one image; each tile on its own scale."""
    tiles = [_colorize(view.weights[h], _head_visible(view, h)) for h in range(view.heads)]
    mean, mean_visible = view.head_mean()
    tiles.append(_colorize(mean, mean_visible))
    names = [f"head {h}" for h in range(view.heads)] + ["mean"]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    return _tiled_figure(tiles, names, rows, cols, title, view.note, view.visible is not None)


def atlas(views: Sequence[AttentionView], title: str) -> np.ndarray:
    """Every layer (rows) × head (columns) of one sample, to see the whole model at a glance."""
    heads = max(v.heads for v in views)
    tiles: list[np.ndarray | None] = []
    names: list[str] = []
    for row, view in enumerate(views):
        for h in range(heads):
            tiles.append(_colorize(view.weights[h], _head_visible(view, h)) if h < view.heads else None)
            names.append(f"head {h}" if row == 0 else "")
    notes = sorted({v.note for v in views if v.note})
    masked = any(v.visible is not None for v in views)
    row_names = [_short(v.layer) for v in views]
    return _tiled_figure(tiles, names, len(views), heads, title, "; ".join(notes), masked, row_names)


def evolution(
    maps: Sequence[np.ndarray],
    labels: Sequence[str],
    visible: np.ndarray | None,
    title: str,
    note: str = "",
) -> np.ndarray:
    """The same map at successive captures side by side on one shared scale, then the change since
    the previous capture (red: more attention, blue: less).

    Shape:
        maps: each ``(q, k)``, oldest first; visible: ``(q, k)`` or ``None``.
    """
    vmax = max(_vmax(m, visible) for m in maps)
    tiles = [_colorize(m, visible, vmax) for m in maps]
    names = list(labels)
    scale = f"shared scale 0..{vmax:.2g} (viridis)"
    if len(maps) > 1:
        diff = maps[-1] - maps[-2]
        tiles.append(_colorize_diff(diff, visible))
        names.append(f"Δ since {labels[-2].split(' · ')[0]}")
        scale += f"; Δ: red = more, blue = less (±{np.abs(diff).max():.2g})"
    return _tiled_figure(tiles, names, 1, len(tiles), title, note, visible is not None, scale_note=scale)


_DIFF_LUT = (matplotlib.colormaps["RdBu_r"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def _colorize_diff(diff: np.ndarray, visible: np.ndarray | None) -> np.ndarray:
    """Signed ``(q, k)`` change → RGB on a symmetric ±max scale, white at zero, hidden cells gray."""
    span = max(float(np.abs(diff).max()), 1e-6)
    rgb = _DIFF_LUT[np.clip((diff / span + 1) * 127.5, 0, 255).astype(np.uint8)]
    if visible is not None:
        rgb[~visible] = MASKED_RGB
    return rgb


def arrows(
    weights: np.ndarray,
    q_labels: Sequence[str],
    k_labels: Sequence[str],
    title: str,
    top_k: int = 3,
    note: str = "",
) -> np.ndarray:
    """Which token attends to which: queries left, keys right, a line from each query to its
    ``top_k`` keys with opacity ∝ weight (bertviz's head view, as a static image).

    Shape:
        weights: ``(q, k)``.
    """
    q_len, k_len = weights.shape
    height = max(3.0, max(q_len, k_len) * 0.2 + 1.4)
    fig = Figure(figsize=(4.6, height), dpi=_DPI)
    ax = fig.add_axes((0.2, 0.45 / height, 0.6, 1 - 1.15 / height))
    ax.set_xlim(0, 1)
    ax.set_ylim(max(q_len, k_len) - 0.5, -0.5)
    ax.axis("off")
    k = min(top_k, k_len)
    top = np.argsort(-weights, axis=1)[:, :k]  # (q, k) key indices, strongest first
    segments, colors = [], []
    peak = max(float(weights.max()), 1e-12)
    base = np.array(matplotlib.colormaps["Blues"](0.85))
    for i in range(q_len):
        for j in top[i]:
            w = float(weights[i, j])
            if w <= 0:
                continue
            segments.append(((0.02, i), (0.98, j)))
            colors.append((*base[:3], min(1.0, w / peak)))
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=1.6))
    fontsize = 8 if max(q_len, k_len) <= 40 else 6
    for i, label in enumerate(q_labels):
        ax.text(0.0, i, label, ha="right", va="center", fontsize=fontsize)
    for j, label in enumerate(k_labels):
        ax.text(1.0, j, label, ha="left", va="center", fontsize=fontsize)
    fig.suptitle(title, fontsize=8, y=1 - 0.08 / height, va="top")
    fig.text(0.2, 1 - 0.5 / height, "query", ha="right", va="top", fontsize=8, color="gray")
    fig.text(0.8, 1 - 0.5 / height, "key", ha="left", va="top", fontsize=8, color="gray")
    _footnote(fig, f"top {k} keys per query, opacity ∝ weight" + (f"; {note}" if note else ""), False)
    return _to_array(fig)


def _vmax(weights: np.ndarray, visible: np.ndarray | None) -> float:
    shown = weights if visible is None else weights[visible]
    shown = shown[np.isfinite(shown)]
    return max(float(shown.max()) if shown.size else 0.0, 1e-6)


def _head_visible(view: AttentionView, head: int) -> np.ndarray | None:
    if view.visible is None:
        return None
    return view.visible[head if view.visible.shape[0] > 1 else 0]


def _colorize(weights: np.ndarray, visible: np.ndarray | None, vmax: float | None = None) -> np.ndarray:
    """``(q, k)`` weights → ``(q, k, 3)`` uint8 on a 0..vmax scale (default: the map's own max),
    hidden cells gray."""
    index = np.clip(weights / (vmax or _vmax(weights, visible)) * 255, 0, 255)
    rgb = _LUT[np.nan_to_num(index).astype(np.uint8)]
    rgb[~np.isfinite(weights)] = MASKED_RGB  # NaN/inf (non-finite inputs): no weight to show
    if visible is not None:
        rgb[~visible] = MASKED_RGB
    return rgb


def _tiled_figure(
    tiles: Sequence[np.ndarray | None],
    names: Sequence[str],
    rows: int,
    cols: int,
    title: str,
    note: str,
    masked: bool,
    row_names: Sequence[str] = (),
    scale_note: str = "each tile scaled 0..its max (viridis)",
) -> np.ndarray:
    """Lay tiles out in a grid under a title, with a name above each tile and a label left of each row.

    Matplotlib draws only the text; the tiles are pasted into the drawn array pixel for pixel.
    """
    size_q = max(t.shape[0] for t in tiles if t is not None)
    size_k = max(t.shape[1] for t in tiles if t is not None)
    scale = max(1, _TILE // max(size_q, size_k))
    th, tw, gap, label = size_q * scale, size_k * scale, 6, 14
    margin = 10 + 5 * max(map(len, row_names), default=0)  # room for row labels, in pixels
    top_px, bottom_px = 24, 24
    grid_h, grid_w = rows * (th + gap + label), cols * (tw + gap)
    height_px, width_px = grid_h + top_px + bottom_px, max(grid_w + margin + 10, 360)
    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)

    def origin(index: int) -> tuple[int, int]:  # top-left pixel of a tile
        r, c = divmod(index, cols)
        return top_px + r * (th + gap + label) + label, margin + c * (tw + gap)

    for index, name in enumerate(names):
        if name and tiles[index] is not None:
            y, x = origin(index)
            fig.text(x / width_px, 1 - (y - 3) / height_px, name, fontsize=7, va="bottom")
    for r, name in enumerate(row_names):
        y, _ = origin(r * cols)
        fig.text(
            (margin - 6) / width_px, 1 - (y + th / 2) / height_px, name, fontsize=7, ha="right", va="center"
        )
    fig.suptitle(title, fontsize=9, y=1 - 4 / height_px, va="top")
    _footnote(fig, "; ".join(n for n in (scale_note, note) if n), masked)
    image = _to_array(fig)
    for index, tile in enumerate(tiles):
        if tile is not None:
            y, x = origin(index)
            up = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            image[y : y + up.shape[0], x : x + up.shape[1]] = up
    return image


def _footnote(fig: Figure, note: str, masked: bool) -> None:
    text = "; ".join(t for t in (note, "gray = masked" if masked else "") if t)
    if text:
        fig.text(0.01, 0.005, text, fontsize=7, color="dimgray", ha="left", va="bottom")


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _to_array(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    array = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    fig.clear()
    return array


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
    strips: Mapping[tuple[int, str], tuple[Sequence[np.ndarray], Sequence[str]]] | None = None,
) -> list[Picture]:
    """Every requested picture of every view, in sample then forward order.

    Args:
        views: reduced maps of the fixed samples.
        step: the training step, shown in titles.
        plots: which of ``"heatmap"`` (head mean), ``"heads"`` (grid), ``"arrows"``, ``"atlas"``.
        heads: heads that also get their own token-labelled heatmap.
        top_k: keys per query in the arrow view.
        strips: for ``"evolution"``, per ``(sample, layer)`` the past head-mean maps and their labels.
    """
    pictures = []
    for view in views:
        mean, mean_visible = view.head_mean()
        where = f"{view.layer} · sample {view.sample} · step {step}"
        if "heatmap" in plots:
            image = heatmap(
                mean, mean_visible, view.q_labels, view.k_labels, f"{where} · head mean", view.note
            )
            pictures.append(Picture("heatmap", view.sample, view.layer, image))
        for h in heads:
            if h < view.heads:
                image = heatmap(
                    view.weights[h],
                    _head_visible(view, h),
                    view.q_labels,
                    view.k_labels,
                    f"{where} · head {h}",
                    view.note,
                )
                pictures.append(Picture("heatmap", view.sample, view.layer, image, head=h))
        if "heads" in plots:
            pictures.append(Picture("heads", view.sample, view.layer, head_grid(view, where)))
        if "arrows" in plots:
            image = arrows(mean, view.q_labels, view.k_labels, f"{where} · head mean", top_k, view.note)
            pictures.append(Picture("arrows", view.sample, view.layer, image))
        if "evolution" in plots and strips and strips.get((view.sample, view.layer), ((), ()))[0]:
            maps, labels = strips[(view.sample, view.layer)]
            image = evolution(
                maps, labels, mean_visible, f"{view.layer} · sample {view.sample} · head mean", view.note
            )
            pictures.append(Picture("evolution", view.sample, view.layer, image))
    if "atlas" in plots:
        for sample in sorted({v.sample for v in views}):
            of_sample = [v for v in views if v.sample == sample]
            pictures.append(
                Picture("atlas", sample, None, atlas(of_sample, f"sample {sample} · step {step}"))
            )
    return pictures
