"""Vector figures of the pictures, for papers: the same layout and colours as the PNG, drawn with
matplotlib, text as text.

A picture's :class:`~lightning_attnviz.render.layout.Canvas` knows where each text went, in which size,
colour and direction, and which line segments it blended in. The figure is one point per canvas pixel:
the canvas without its texts and lines (cells, colour bars, images) as one embedded raster, drawn
unsampled so the cells stay sharp squares at any zoom; every line segment as a vector line; every text
as a text artist in the same font (DejaVu Sans, matplotlib's own) at the same place. SVG gets ``<text>``
elements (editable, searchable); PDF embeds the font.

Drawn with a :class:`~matplotlib.figure.Figure` and the SVG or PDF canvas directly: no pyplot, no
rcParams. SVG's text-as-text is what ``svg.fonttype = "none"`` selects; a renderer that always writes
text that way gives it without changing the process-wide rcParams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backend_bases import GraphicsContextBase
from matplotlib.backends.backend_pdf import FigureCanvasPdf
from matplotlib.backends.backend_svg import FigureCanvasSVG, RendererSVG
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.text import Text

from lightning_attnviz.render.glyphs import BOLD, FONT, ascent
from lightning_attnviz.render.layout import Canvas, Placed

POINT = 72  # dots per inch: one canvas pixel is one point, a font of n pixels is n points
VectorFormat = Literal["svg", "pdf"]


def figure(canvas: Canvas) -> Figure:
    """The picture as a matplotlib figure, ``canvas.width × canvas.height`` points."""
    height, width = canvas.height, canvas.width
    fig = Figure(figsize=(width / POINT, height / POINT), dpi=POINT)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.imshow(canvas.background(), extent=(0, width, height, 0), interpolation="none", aspect="auto")
    for segments in canvas.segments:
        rgb = np.asarray(segments.color, dtype=np.float64) / 255
        colors = [(*rgb, alpha) for *_, alpha in segments.lines]
        lines = [((x0, y0), (x1, y1)) for x0, y0, x1, y1, _ in segments.lines]
        ax.add_collection(LineCollection(lines, colors=colors, linewidths=segments.width, capstyle="round"))
    regular, bold = FontProperties(fname=FONT), FontProperties(fname=BOLD)
    for placed in canvas.texts:
        _text(ax, placed, bold if placed.bold else regular)
    return fig


def _text(ax: Axes, placed: Placed, font: FontProperties) -> None:
    """One text at its box: its baseline where the raster's was (the box's top plus the ascent)."""
    box, size = placed.box, placed.size
    rise = ascent(size)
    color = tuple(c / 255 for c in placed.color)
    props: dict[str, Any] = {  # Text's keyword arguments, as matplotlib types them
        "fontproperties": font, "fontsize": size, "color": color, "va": "baseline", "ha": "left"
    }
    if placed.rotate:  # reads upwards: its baseline is the box's left edge plus the ascent
        ax.text(box.x + rise, box.y + box.h, placed.text, rotation=90, rotation_mode="anchor", **props)
    else:
        ax.text(box.x, box.y + rise, placed.text, **props)


class _TextRenderer(RendererSVG):
    """matplotlib's SVG renderer, every text written as a ``<text>`` element."""

    def draw_text(
        self,
        gc: GraphicsContextBase,
        x: float,
        y: float,
        s: str,
        prop: FontProperties,
        angle: float,
        ismath: bool | Literal["TeX"] = False,
        mtext: Text | None = None,
    ) -> None:
        self._draw_text_as_text(gc, x, y, s, prop, angle, ismath, mtext)


def save(canvas: Canvas, path: str | Path, fmt: VectorFormat) -> None:
    """Writes the picture as an SVG or PDF file.

    Raises:
        ValueError: ``fmt`` is not ``"svg"`` or ``"pdf"``.
    """
    fig = figure(canvas)
    if fmt == "pdf":
        FigureCanvasPdf(fig).print_pdf(str(path))
        return
    if fmt != "svg":
        raise ValueError(f"`fmt` must be 'svg' or 'pdf', got {fmt!r}")
    FigureCanvasSVG(fig)
    width, height = fig.get_size_inches() * POINT
    with open(path, "w", encoding="utf-8") as handle:
        renderer = _TextRenderer(width, height, handle, image_dpi=POINT)
        fig.draw(renderer)
        renderer.finalize()
