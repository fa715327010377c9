"""A small layout and text raster engine: every picture is a numpy RGB canvas with text pasted in.

Text comes as cached alpha bitmaps from :mod:`lightning_attnviz.render.glyphs` (rasterised once with FreeType,
not drawn as matplotlib artists) and is alpha-blended into the canvas. Nothing global is touched: the
only shared object is that cache, behind a lock, so pictures can be drawn from any thread.

Sizes are measured before the canvas is allocated, and every text is bounded first (long names are
shortened in the middle, where dotted module paths are least distinctive), so no input can make a
picture grow without bound.

A canvas also keeps what a vector figure needs (:mod:`lightning_attnviz.render.vector`): every text
with its font size, colour and direction, every line segment drawn, and the pixels they covered, so
that the picture can be redrawn with its text as text and its lines as lines over the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ParamSpec

import numpy as np

from lightning_attnviz.render.glyphs import bitmap, fit, line_height, tint, width, wrap
from lightning_attnviz.render.glyphs import shorten as shorten

INK = (30, 30, 30)
Tint = tuple[np.ndarray, np.ndarray]  # glyphs.tint: a label's blend terms
GRAY = (100, 100, 100)


@dataclass(frozen=True)
class Box:
    """A pixel rectangle: ``x, y`` top-left, then width and height."""

    x: int
    y: int
    w: int
    h: int

    def inside(self, other: Box) -> bool:
        return (
            self.x >= other.x
            and self.y >= other.y
            and self.x + self.w <= other.x + other.w
            and self.y + self.h <= other.y + other.h
        )

    def overlaps(self, other: Box) -> bool:
        return not (
            self.x + self.w <= other.x
            or other.x + other.w <= self.x
            or self.y + self.h <= other.y
            or other.y + other.h <= self.y
        )


@dataclass(frozen=True)
class Placed:
    """A text as drawn: the string after shortening, the box it covers, and how it was set (font size
    in pixels, colour, turned to read upwards, bold)."""

    text: str
    box: Box
    size: int = 11
    color: tuple[int, int, int] = INK
    rotate: bool = False
    bold: bool = False


@dataclass(frozen=True)
class Segments:
    """Straight lines blended in as one layer: ``(x0, y0, x1, y1, opacity)`` each, in canvas pixels."""

    lines: tuple[tuple[float, float, float, float, float], ...]
    color: tuple[int, int, int]
    width: float


@dataclass
class Canvas:
    """A white RGB picture that records what was drawn where, so tests can read it back.

    Shape:
        image: ``(height, width, 3)`` uint8, TensorBoard's ``HWC``.
    """

    height: int
    width: int
    image: np.ndarray = field(init=False)
    texts: list[Placed] = field(default_factory=list)
    boxes: dict[str, Box] = field(default_factory=dict)
    segments: list[Segments] = field(default_factory=list)
    _under: list[tuple[int, int, np.ndarray]] = field(default_factory=list, repr=False)  # before ink

    def __post_init__(self) -> None:
        self.image = np.full((self.height, self.width, 3), 255, dtype=np.uint8)

    @property
    def box(self) -> Box:
        return Box(0, 0, self.width, self.height)

    def text(
        self,
        text: str,
        x: float,
        y: float,
        size: int = 11,
        anchor: str = "lt",
        color: tuple[int, int, int] = INK,
        rotate: bool = False,
        bold: bool = False,
    ) -> Box:
        """Blend one line of text in; ``anchor`` is horizontal ``l|c|r`` then vertical ``t|m|b``."""
        rgb = (color[0], color[1], color[2])
        mask = bitmap(text, size, rotate, bold)
        h, w = mask.shape
        x0 = round(x - {"l": 0, "c": w / 2, "r": w}[anchor[0]])
        y0 = round(y - {"t": 0, "m": h / 2, "b": h}[anchor[1]])
        self.ink(mask, x0, y0, rgb, tint(text, size, rotate, bold, rgb))
        box = Box(x0, y0, w, h)
        self.texts.append(Placed(text, box, size, rgb, rotate, bold))
        return box

    def ink(self, mask: np.ndarray, x: int, y: int, color: Sequence[int], tinted: Tint | None = None) -> None:
        """:meth:`blend` for text and lines: the pixels under them are kept for :meth:`background`."""
        if tinted is None:  # a plane of lines or stamped texts: only its inked box changes anything
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            if not len(rows):
                return
            mask = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            x, y = x + int(cols[0]), y + int(rows[0])
        h, w = mask.shape
        ys, xs, ye, xe = max(0, y), max(0, x), min(self.height, y + h), min(self.width, x + w)
        if ye > ys and xe > xs:
            self._under.append((ys, xs, self.image[ys:ye, xs:xe].copy()))
        self.blend(mask, x, y, color, tinted)

    def background(self) -> np.ndarray:
        """The picture without its texts and line segments: what a vector figure draws them over.

        Shape:
            ``(height, width, 3)`` uint8.
        """
        image = self.image.copy()
        for y, x, pixels in reversed(self._under):
            image[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
        return image

    def lines(self, lines: Sequence[str], x: float, y: float, size: int = 11, **kwargs: Any) -> Box:
        """Several lines, the first one's top at ``y``; returns the box around all of them."""
        step = line_height(size)
        boxes = [self.text(line, x, y + i * step, size, **kwargs) for i, line in enumerate(lines)]
        if not boxes:
            return Box(round(x), round(y), 0, 0)
        left, top = min(b.x for b in boxes), boxes[0].y
        right = max(b.x + b.w for b in boxes)
        return Box(left, top, right - left, boxes[-1].y + boxes[-1].h - top)

    def blend(self, mask: np.ndarray, x: int, y: int, rgb: Sequence[int], tinted: Tint | None = None) -> None:
        """Paint ``rgb`` through an alpha ``mask`` at ``(x, y)``, clipped to the canvas; ``tinted``
        is :func:`~lightning_attnviz.render.glyphs.tint` of that mask and colour, when kept."""
        h, w = mask.shape
        ys, xs = max(0, -y), max(0, -x)
        ye, xe = min(h, self.height - y), min(w, self.width - x)
        if ye <= ys or xe <= xs:
            return
        if tinted is None:
            a = mask[:, :, None].astype(np.uint16)  # 255·255 + 127 fits: no wider type needed
            tinted = 255 - a, np.asarray(rgb, dtype=np.uint16) * a + 127
        inverse, add = tinted[0][ys:ye, xs:xe], tinted[1][ys:ye, xs:xe]
        region = self.image[y + ys : y + ye, x + xs : x + xe]
        # every pixel of the box at once (an empty one, alpha 0, keeps its value exactly): faster
        # than picking the inked pixels out first
        mixed = region * inverse
        mixed += add
        mixed //= 255
        region[...] = mixed

    def paste(self, rgb: np.ndarray, x: int, y: int, name: str | None = None) -> Box:
        """Copy an RGB array in pixel for pixel (clipped); ``name`` records its box in ``boxes``."""
        h, w = rgb.shape[:2]
        ye, xe = min(h, self.height - y), min(w, self.width - x)
        self.image[y : y + ye, x : x + xe] = rgb[:ye, :xe]
        box = Box(x, y, w, h)
        if name:
            self.boxes[name] = box
        return box


def scale_up(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Repeat each pixel ``factor`` times both ways (cells stay sharp squares)."""
    if factor == 1:
        return rgb
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1)


def colorbar(
    canvas: Canvas,
    lut: np.ndarray,
    x: int,
    y: int,
    height: int,
    ticks: Sequence[tuple[float, str]],
    bar: int = 12,
    size: int | None = None,
) -> Box:
    """A vertical ramp of ``lut`` (top = last entry) with labelled ticks at fractions ``0..1``.

    Shape:
        lut: ``(n, 3)`` uint8.
    """
    size = SMALL if size is None else size
    index = np.linspace(len(lut) - 1, 0, height).round().astype(int)
    canvas.paste(np.broadcast_to(lut[index][:, None, :], (height, bar, 3)), x, y, "colorbar")
    for frac, label in ticks:
        ty = y + round((1 - frac) * (height - 1))
        canvas.image[ty, x + bar : x + bar + 3] = GRAY
        canvas.text(label, x + bar + 5, ty, size, anchor="lm")
    return Box(x, y, bar + 5 + max((width(t, size) for _, t in ticks), default=0), height)


def colorbar_width(ticks: Sequence[tuple[float, str]], bar: int = 12, size: int | None = None) -> int:
    return bar + 5 + max((width(t, SMALL if size is None else size) for _, t in ticks), default=0)


# -- pages: a title on top, a note at the bottom, and a grid of tiles between ------------------------

# Pixels: margin, title, label and tick-label font sizes. TensorBoard shows a picture at its card's
# width, about 330–380 CSS px on a laptop screen; pictures are laid out about 480–560 px wide, so these
# sizes show at 9–11 px there (legible without "Show actual image size").
PAD, TITLE, LABEL, SMALL = 8, 17, 15, 14
CARD = 350  # CSS px: the width TensorBoard's Images and Time Series cards show a picture at
Title = str | Sequence[str]  # a string wraps; a sequence is one line per item, each fitted to width
Bar = tuple[np.ndarray, Sequence[tuple[float, str]]]  # a colorbar: lookup table and ticks


def stride(cell: int, size: int = LABEL) -> int:
    """Label every ``stride``-th cell of ``cell`` pixels, so that labels are at least a line apart."""
    return max(1, math.ceil((size + 1) / cell))


def title_lines(title: Title, page_width: int) -> list[str]:
    if isinstance(title, str):
        return wrap(title, TITLE, page_width - 2 * PAD)
    return [fit(line, TITLE, page_width - 2 * PAD) for line in title][:4]


def header_height(title: Title, page_width: int) -> int:
    return PAD + len(title_lines(title, page_width)) * line_height(TITLE) + 6


def footer(note: str, page_width: int) -> tuple[list[str], int]:
    """The note's lines (``\\n`` starts a paragraph) and the height they need, margin included."""
    lines = [line for part in note.split("\n") if part for line in wrap(part, LABEL, page_width - 2 * PAD)]
    return lines, len(lines) * line_height(LABEL) + PAD


_kept: ContextVar[list[Canvas] | None] = ContextVar("kept_canvases", default=None)


@contextmanager
def keep_canvases() -> Iterator[list[Canvas]]:
    """Every page finished inside the block, in order: the vector output finds each picture's layout
    (``canvas.image is picture.image``) without changing what the drawing functions return. A context
    variable, so other threads and the drawing process are unaffected."""
    kept: list[Canvas] = []
    token = _kept.set(kept)
    try:
        yield kept
    finally:
        _kept.reset(token)


Args = ParamSpec("Args")


def image_only(draw: Callable[Args, Canvas]) -> Callable[Args, np.ndarray]:
    """A ``draw_*`` function that returns its ``(H, W, 3)`` uint8 picture alone: what the pipeline logs,
    while tests and the vector figures read the layout of the canvas."""

    def image(*args: Args.args, **kwargs: Args.kwargs) -> np.ndarray:
        return draw(*args, **kwargs).image

    image.__doc__ = draw.__doc__
    return image


def finish(canvas: Canvas, title: Title, foot: Sequence[str]) -> Canvas:
    """Draw the title centred on top and the note bottom left; record them as boxes."""
    canvas.boxes["title"] = canvas.lines(
        title_lines(title, canvas.width), canvas.width / 2, PAD, TITLE, anchor="ct"
    )
    y = canvas.height - PAD // 2 - len(foot) * line_height(LABEL)
    canvas.boxes["note"] = canvas.lines(foot, PAD, y, LABEL, anchor="lt", color=GRAY)
    kept = _kept.get()
    if kept is not None:
        kept.append(canvas)
    return canvas


def grid(
    tiles: Sequence[np.ndarray | None],
    names: Sequence[Sequence[str]],
    cols: int,
    title: Title,
    note: str,
    cell: int = 1,
    row_names: Sequence[str] = (),
    q_labels: Sequence[str] = (),
    k_labels: Sequence[str] = (),
    bar: Bar | None = None,
    min_width: int = 360,
) -> Canvas:
    """Tiles in a grid, each scaled up by ``cell``, with name lines above each, row names left, token
    labels along the left column and under the lowest tile of each column, and one colorbar.

    Tile ``i`` lands at ``boxes[f"tile {i}"]``.
    """
    th = max(t.shape[0] for t in tiles if t is not None) * cell
    tw = max(t.shape[1] for t in tiles if t is not None) * cell
    rows, gap = math.ceil(len(tiles) / cols), 10
    every = stride(cell, SMALL)
    label_w = max((width(t, SMALL) for t in [*q_labels[::every], *k_labels[::every]]), default=0)
    row_w = max((width(t, LABEL) for t in row_names), default=0)
    name_h = [max((len(n) for n in names[r * cols : (r + 1) * cols]), default=0) * line_height(LABEL) + 3
              for r in range(rows)]  # fmt: skip
    row_y = np.cumsum([0] + [h + th + gap for h in name_h])  # top of each row, names included
    left = PAD + row_w + (6 if row_w else 0) + (label_w + 4 if q_labels else 0)
    grid_w = cols * (tw + gap) - gap
    bar_w = colorbar_width(bar[1]) + 16 if bar else 0
    page_width = max(left + grid_w + bar_w + PAD, min_width)
    top = header_height(title, page_width)
    foot, foot_h = footer(note, page_width)
    below = (label_w + 6) if k_labels else 0
    canvas = Canvas(top + int(row_y[-1]) + below + foot_h, page_width)
    lowest = {i % cols: i for i in range(len(tiles)) if tiles[i] is not None}
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        x, y = left + c * (tw + gap), top + int(row_y[r]) + name_h[r]
        if tile is None:
            continue
        canvas.paste(scale_up(tile, cell), x, y, f"tile {i}")
        canvas.lines(names[i], x + tw / 2, y - name_h[r], LABEL, anchor="ct")
        if c == 0 and row_names:
            canvas.text(row_names[r], PAD + row_w, y + th / 2, LABEL, anchor="rm")
        if c == 0:
            for q in range(0, len(q_labels), every):
                canvas.text(q_labels[q], x - 3, y + (q + 0.5) * cell, SMALL, anchor="rm", color=GRAY)
        if lowest.get(c) == i:
            for k in range(0, len(k_labels), every):
                canvas.text(k_labels[k], x + (k + 0.5) * cell, y + th + 3, SMALL, "ct", GRAY, rotate=True)
    if bar:
        height = max(th, min(160, int(row_y[-1]) - name_h[0] - gap))
        colorbar(canvas, bar[0], left + grid_w + 16, top + name_h[0], height, bar[1])
    return finish(canvas, title, foot)
