"""The per-head scalars of a whole model in one picture: a layer × head matrix per metric and capture.

A 12-layer, 12-head model has 144 heads; 144 scalar series per metric read as noise, one matrix reads
at a glance. Each picture shows one metric: rows are the layers in forward order (the first on top,
names shortened in the middle), columns the heads, and a last column the layer's mean over heads (the
value its ``attention_stats/<metric>/<layer>/mean`` curve shows). Values are written in the cells when
the cells are large enough, colours follow a colorbar labelled in the metric's units, and gray means
no value (e.g. a cross-attention layer has no distance). Beside it, the change since the previous
capture on a diverging scale. Composed with :mod:`lightning_attnviz.render.layout` (PIL text, numpy), so a
12 × 12 picture costs milliseconds and nothing global is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lightning_attnviz.analysis.views import LOGGED_METRICS, ROLES, LayerStats
from lightning_attnviz.render import glyphs, layout
from lightning_attnviz.render.layout import Canvas
from lightning_attnviz.render.maps import Picture, _common_prefix
from lightning_attnviz.render.scale import _DIFF_LUT, _LUT, MASKED_RGB, _colorize_diff

# Pictured: every logged metric but the entropy in nats, whose scale depends on the sequence length
# (the normalised entropy says the same on one scale for every layer).
# and the heads' role scores (analysis.roles), drawn the same way.
STATS_METRICS: tuple[str, ...] = (*(m for m in LOGGED_METRICS if m != "entropy"), *ROLES)
_LABEL, _SMALL, _PAD = layout.LABEL, layout.SMALL, layout.PAD
_MAX_CELL_W, _MAX_CELL_H = 46, 24  # pixels: wide enough for "+0.05" in the cell
_MATRIX_W, _MATRIX_H = 264, 100  # pixels the head columns and layer rows are scaled towards
_ROW_NAME_W = 130  # pixels a layer name is shortened to (in the middle)
_BAR_ROOM = ((0.0, "+0.005  higher"),)  # the widest usual colorbar label
_BAR_H = 90  # pixels of a colorbar at least
_GAP = 14  # pixels between a matrix, its mean column, its colorbar and the next panel


@dataclass(frozen=True)
class Metric:
    """How one metric is shown: its title, what its values mean, and its colour range.

    Attributes:
        low, high: a fixed colour range, or ``None`` to scale ``0 … the largest value``.
        ends: colorbar words at the low and high end (after the number).
        decimals: digits after the point written in the cells.
        min_change: the change panel's smallest ±range, as a fraction of the colour range: changes
            far below it (noise between two captures) stay near white instead of filling the scale.
    """

    name: str
    title: str
    meaning: str
    low: float | None
    high: float | None
    ends: tuple[str, str]
    decimals: int
    min_change: float = 0.05


def metrics(sink_tokens: int = 1, distance_unit: str = "positions") -> dict[str, Metric]:
    """The shown metrics, their meaning stated with this run's sink keys and distance unit."""
    first = "the first key" if sink_tokens == 1 else f"the first {sink_tokens} keys"
    return {
        "entropy_norm": Metric("entropy_norm", "normalised attention entropy",
            "entropy of each query row ÷ log(visible keys), averaged over rows and samples: "
            "0 = all weight on one key, 1 = spread evenly (uniform)",
            0.0, 1.0, ("one key", "uniform"), 2),
        "distance": Metric("distance", f"mean attention distance ({distance_unit})",
            f"Σ_j a_ij·|i − j| averaged over query rows, in {distance_unit} "
            f"(between patch centres for layers on an image's patch grid); self-attention only",
            None, None, ("", distance_unit), 1),
        "sink": Metric("sink", "attention-sink share",
            f"share of each query row's weight on {first} (the attention sink), averaged over rows: "
            "0 = none, 1 = everything", 0.0, 1.0, ("none", "all on sink"), 2),
        "max_weight": Metric("max_weight", "largest attention weight",
            "the largest weight of any query row: 1 = some row puts everything on one key",
            0.0, 1.0, ("", "one-hot"), 2),
        "drift": Metric("drift", "drift since the previous capture",
            "Jensen–Shannon divergence between this capture's and the previous capture's query rows, "
            "in nats, averaged over rows and samples: 0 = unchanged, ln 2 ≈ 0.69 = disjoint",
            None, None, ("unchanged", "nats"), 3),
        **ROLE_METRICS,
    }  # fmt: skip


_SHARE = "share of each head's attention on {} (TransformerLens's score{}), averaged over samples"
ROLE_METRICS = {
    "previous_token": Metric("previous_token", "previous-token score",
        _SHARE.format("the previous token", "") + ": (T − 1)/T = every row",
        0.0, 1.0, ("none", "all"), 2),
    "duplicate_token": Metric("duplicate_token", "duplicate-token score",
        _SHARE.format("earlier copies of the query's token", ""), 0.0, 1.0, ("none", "all"), 2),
    "induction": Metric("induction", "induction score",
        _SHARE.format("the token after an earlier copy of the query's token", "; Olsson et al. 2022"),
        0.0, 1.0, ("none", "all"), 2),
    "first_token": Metric("first_token", "first-token score",
        "mean attention to the first key over query rows and samples: above 0.3 a sink head "
        "(Gu et al. 2025)", 0.0, 1.0, ("none", "all on it"), 2),
}  # fmt: skip


@dataclass(frozen=True)
class StatsPicture(Picture):
    """A stats matrix: ``layer`` is ``None``, ``sample`` 0 (values are averaged over the samples).

    ``values``, ``layers`` and ``info`` are the matrix it was drawn from: the Attention tab's overview
    is written from them (:func:`matrix_picture` fills them), so every metric drawn here is shown there.

    Shape:
        values: ``(layers, heads)``.
    """

    metric: str = ""
    values: np.ndarray | None = None
    layers: tuple[str, ...] = ()
    info: Metric | None = None


def matrix_picture(
    values: np.ndarray, layers: Sequence[str], metric: Metric, image: np.ndarray
) -> StatsPicture:
    """``image`` (drawn by :func:`draw_stats`) as the ``attention/stats/<metric>`` picture, carrying the
    matrix it shows."""
    return StatsPicture("stats", 0, None, image, metric=metric.name, values=values, layers=tuple(layers),
                        info=metric)  # fmt: skip


def stats_matrix(
    stats: Sequence[LayerStats], metric: str, drift: Mapping[str, np.ndarray] | None = None
) -> np.ndarray:
    """One row per layer (in the order given) and one column per head; NaN where a layer has fewer
    heads, or no value.

    Shape:
        returns ``(layers, max heads)`` float64.
    """
    rows = [
        np.asarray((drift or {}).get(s.layer, []) if metric == "drift" else getattr(s, metric)) for s in stats
    ]
    heads = max((max(len(s.entropy_norm), r.size) for s, r in zip(stats, rows, strict=True)), default=0)
    out = np.full((len(stats), heads), np.nan)
    for i, row in enumerate(rows):
        out[i, : row.size] = row.astype(np.float64).ravel()
    return out


def _row_mean(values: np.ndarray) -> np.ndarray:
    """Each row's mean over its finite values; NaN for a row without any (no numpy warning)."""
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    return np.where(count > 0, np.where(finite, values, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)


def _nice(value: float) -> float:
    """The next 1, 2 or 5 × 10^k at or above ``value`` (a colorbar's top)."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    base = 10 ** np.floor(np.log10(value))
    return float(next(m * base for m in (1, 2, 5, 10) if m * base >= value * (1 - 1e-9)))


def _text_colors(rgb: np.ndarray) -> np.ndarray:
    """White on dark cells, ink on light ones."""
    light = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) > 140
    return np.where(light[..., None], np.array(layout.INK), np.array((255, 255, 255)))


@dataclass(frozen=True)
class _Panel:
    subtitle: str
    values: np.ndarray  # (layers, heads)
    means: np.ndarray  # (layers,)
    rgb: np.ndarray  # (layers, heads + 1, 3): the mean last
    ticks: tuple[tuple[float, str], ...]
    lut: np.ndarray
    fmt: str  # format of a cell's value
    empty: str = ""  # written over the panel when it has no values
    high: float = 1.0  # the width of the colour range


def _sequential(values: np.ndarray, means: np.ndarray, m: Metric, subtitle: str) -> _Panel:
    finite = np.concatenate([values[np.isfinite(values)], means[np.isfinite(means)]])
    low = m.low if m.low is not None else 0.0
    high = m.high if m.high is not None else _nice(float(finite.max()) if finite.size else 0.0)
    both = np.concatenate([values, means[:, None]], axis=1)
    t = np.clip((both - low) / (high - low), 0.0, 1.0)
    rgb = _LUT[np.nan_to_num(t * 255).round().astype(np.uint8)]
    rgb[~np.isfinite(both)] = MASKED_RGB
    mid = f"{(low + high) / 2:g}"
    ticks = (
        (1.0, f"{high:g}  {m.ends[1]}".strip()),
        (0.5, mid),
        (0.0, f"{low:g}  {m.ends[0]}".strip()),
    )
    return _Panel(subtitle, values, means, rgb, ticks, _LUT, f"{{:.{m.decimals}f}}", high=high - low)


def _change(now: np.ndarray, before: np.ndarray | None, m: Metric, subtitle: str, scale: float) -> _Panel:
    if before is None or before.shape != now.shape:
        before, empty = np.full_like(now, np.nan), "no previous capture\nof these layers"
    else:
        empty = ""
    diff = now - before
    finite = np.abs(diff[np.isfinite(diff)])
    span = _nice(max(float(finite.max()) if finite.size else 0.0, m.min_change * scale))
    rgb = _colorize_diff(diff, np.isfinite(diff), span)
    ticks = ((1.0, f"+{span:g}  higher"), (0.5, "0  same"), (0.0, f"−{span:g}  lower"))
    if empty:
        ticks = ((1.0, "higher"), (0.5, "same"), (0.0, "lower"))
    return _Panel(subtitle, diff[:, :-1], diff[:, -1], rgb, ticks, _DIFF_LUT, f"{{:+.{m.decimals}f}}", empty)


def draw_stats(
    values: np.ndarray,
    layers: Sequence[str],
    metric: Metric,
    title: layout.Title,
    previous: np.ndarray | None = None,
    previous_step: int | None = None,
    change: bool = True,
) -> Canvas:
    """Layer rows × head columns of one metric, coloured, with the values written in when they fit,
    and (``change``) the difference from ``previous``, the same matrix one capture earlier.

    The layout: ``boxes["matrix"]`` is the head columns of the first panel (one ``cell_w × cell_h``
    cell per layer and head), ``boxes["mean"]`` its mean column and ``boxes["change"]`` the change
    panel's head columns, below it (stacked, so the picture stays narrow enough to read on a
    TensorBoard card).

    Shape:
        values: ``(layers, heads)``; previous: ``(layers, heads + 1)`` (the mean column last).
    """
    n_layers, n_heads = values.shape
    means = _row_mean(values)
    panels = [_sequential(values, means, metric, "this capture")]
    if change:
        now = np.concatenate([values, means[:, None]], axis=1)
        since = "change since the last capture"
        since = f"change since step {previous_step}" if previous_step is not None else since
        panels.append(_change(now, previous, metric, since, panels[0].high))
    cell_w = int(np.clip(_MATRIX_W // max(n_heads, 1), 1, _MAX_CELL_W))
    cell_h = int(np.clip(_MATRIX_H // max(n_layers, 1), 1, _MAX_CELL_H))
    prefix = _common_prefix(list(layers))
    names = [layout.fit(name[len(prefix) :] or name, _LABEL, _ROW_NAME_W) for name in layers]
    row_w = max((layout.width(n, _LABEL) for n in names), default=0)
    map_w, map_h = n_heads * cell_w, n_layers * cell_h
    # colorbars get a fixed room, so that the picture keeps its size from capture to capture
    bar_w = max(max(layout.colorbar_width(p.ticks) for p in panels), layout.colorbar_width(_BAR_ROOM))
    left = _PAD + max(row_w, layout.width("head", _LABEL)) + 6
    width = max(left + map_w + 6 + cell_w + _GAP + bar_w + _PAD, 360)
    top = layout.header_height(title, width)
    panel_h = layout.line_height(_LABEL) + 2 + layout.line_height(_SMALL) + 2 + max(map_h, _BAR_H) + _GAP
    rows_note = f"rows: layers {prefix}*" if prefix else "rows: layers"
    notes = [f"{metric.name}: {metric.meaning}", f"{rows_note} (first on top); columns: heads, their mean"]
    notes = notes[:1] if change else notes  # the card's room: the meaning first
    if change:
        notes.append("change: this capture minus the previous one")
    foot, foot_h = layout.footer("\n".join(notes), width)
    canvas = Canvas(top + len(panels) * panel_h + foot_h, width)
    geometry = (left, cell_w, cell_h, names)
    for k, panel in enumerate(panels):
        _draw_panel(canvas, panel, top + k * panel_h, geometry, "" if k == 0 else "change")
    return layout.finish(canvas, title, foot)


def _draw_panel(
    canvas: Canvas, panel: _Panel, top: int, geometry: tuple[int, int, int, list[str]], name: str
) -> None:
    """One panel at ``top``: its subtitle, head numbers, layer names, cells (and their values when
    they fit) and colorbar; its boxes are ``matrix``/``mean`` (``name`` "") or ``change``/``change mean``."""
    left, cell_w, cell_h, names = geometry
    n_layers, n_heads = panel.values.shape
    map_w, map_h = n_heads * cell_w, n_layers * cell_h
    sub_h, col_h = layout.line_height(_LABEL) + 2, layout.line_height(_SMALL) + 2
    map_y = top + sub_h + col_h
    mean_x = left + map_w + 6
    canvas.text(panel.subtitle, left, top, _LABEL, anchor="lt", bold=True)
    canvas.text("head", left - 6, top + sub_h, _LABEL, anchor="rt", color=layout.GRAY)
    for i in range(0, n_layers, layout.stride(cell_h)):
        canvas.text(names[i], left - 6, map_y + (i + 0.5) * cell_h, _LABEL, anchor="rm")
    canvas.paste(panel.rgb[:, :n_heads].repeat(cell_h, 0).repeat(cell_w, 1), left, map_y, name or "matrix")
    canvas.paste(panel.rgb[:, n_heads:].repeat(cell_h, 0).repeat(cell_w, 1), mean_x, map_y,
                 f"{name} mean".strip() if name else "mean")  # fmt: skip
    head_every = max(1, int(np.ceil((layout.width(str(max(n_heads - 1, 0)), _SMALL) + 4) / cell_w)))
    mean_left = mean_x + cell_w / 2 - layout.width("mean", _SMALL) / 2 - 3
    for h in range(0, n_heads, head_every):
        hx = left + (h + 0.5) * cell_w
        if hx + layout.width(str(h), _SMALL) / 2 <= mean_left:  # never over the "mean" label
            canvas.text(str(h), hx, top + sub_h, _SMALL, anchor="ct", color=layout.GRAY)
    canvas.text("mean", mean_x + cell_w / 2, top + sub_h, _SMALL, anchor="ct", color=layout.GRAY)
    if cell_h >= layout.line_height(_SMALL) - 1:
        _numbers(canvas, panel, left, mean_x, map_y, cell_w, cell_h)
    if panel.empty:
        canvas.lines(panel.empty.split("\n"), mean_x / 2 + left / 2, map_y + map_h / 2 - 12, _LABEL,
                     anchor="ct", color=layout.GRAY)  # fmt: skip
    layout.colorbar(canvas, panel.lut, mean_x + cell_w + _GAP, map_y, max(map_h, _BAR_H), panel.ticks)


def _numbers(canvas: Canvas, panel: _Panel, x: int, mean_x: int, y: int, cell_w: int, cell_h: int) -> None:
    """Each finite value written in its cell, if it fits the cell's width.

    The texts are stamped into one alpha plane per colour and blended once each: blending ~300
    small texts one by one costs ten times as much."""
    colors = _text_colors(panel.rgb)
    light = colors[..., 0] > 128  # white text on dark cells
    both = np.concatenate([panel.values, panel.means[:, None]], axis=1)
    n_heads = panel.values.shape[1]
    margin = _SMALL  # texts may stick out of the matrix by less than a line
    planes = np.zeros((2, both.shape[0] * cell_h + 2 * margin, mean_x + cell_w - x + 2 * margin), np.uint8)
    for (i, j), value in np.ndenumerate(both):
        if not np.isfinite(value):
            continue
        text = panel.fmt.format(value).replace("-", "−")
        if text.lstrip("+−0.") == "" and "+" in panel.fmt:
            text = "0"  # a change that rounds to zero reads as no change, not as "+0.00"
        if text.startswith("0.") and len(text) > 4:
            text = text[1:]  # ".934": the leading zero costs width and says nothing
        mask = glyphs.bitmap(text, _SMALL)
        h, w = mask.shape
        if w + 2 > cell_w:
            continue
        cx = (j + 0.5) * cell_w if j < n_heads else mean_x - x + cell_w / 2
        x0, y0 = round(cx - w / 2) + margin, round((i + 0.5) * cell_h - h / 2) + margin
        target = planes[int(light[i, j]), y0 : y0 + h, x0 : x0 + w]
        np.maximum(target, mask[: target.shape[0], : target.shape[1]], out=target)
        color = (255, 255, 255) if light[i, j] else layout.INK
        box = layout.Box(x + x0 - margin, y + y0 - margin, w, h)
        canvas.texts.append(layout.Placed(text, box, _SMALL, color))
    for plane, color in zip(planes, (layout.INK, (255, 255, 255)), strict=True):
        canvas.ink(plane, x - margin, y - margin, color)


def render_stats(
    stats: Sequence[LayerStats],
    drift: Mapping[str, np.ndarray] | None,
    step: int,
    previous: tuple[int, Sequence[LayerStats], Mapping[str, np.ndarray]] | None = None,
    sink_tokens: int = 1,
    distance_unit: str = "positions",
    which: Sequence[str] = STATS_METRICS,
) -> list[StatsPicture]:
    """One :class:`StatsPicture` per metric with any value (drift from the second capture on).

    Args:
        stats: per layer, in forward order, the per-head scalars of this capture.
        drift: per layer, the per-head drift since the previous capture.
        previous: ``(step, stats, drift)`` of the previous capture, for the change panels.
    """
    shown = metrics(sink_tokens, distance_unit)
    layers = [s.layer for s in stats]
    pictures = []
    for name in which:
        values = stats_matrix(stats, name, drift)
        if not np.isfinite(values).any():
            continue
        before, before_step = None, None
        if previous is not None and [s.layer for s in previous[1]] == layers:
            old = stats_matrix(previous[1], name, previous[2])
            if old.shape == values.shape:
                before = np.concatenate([old, _row_mean(old)[:, None]], axis=1)
                before_step = previous[0]
        title = (shown[name].title, f"step {step} · {len(layers)} layers × {values.shape[1]} heads")
        change = name != "drift"  # drift is a change already
        image = draw_stats(values, layers, shown[name], title, before, before_step, change).image
        pictures.append(matrix_picture(values, layers, shown[name], image))
    return pictures
