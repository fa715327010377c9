"""Text as alpha bitmaps: one line of text rasterised once with FreeType and kept, measured and fitted.

Matplotlib drew each token label as an artist (~2 ms apiece, 64 tokens × 2 axes per heatmap); here a
label is rasterised once with FreeType (PIL, matplotlib's own DejaVu Sans, so the look stays the same)
and kept in a bounded LRU of alpha bitmaps. That cache is the only shared object, behind a lock, so
text can be drawn from any thread. Every text is bounded first: long names are shortened in the
middle, where dotted module paths are least distinctive.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
BOLD = FONT.with_name("DejaVuSans-Bold.ttf")
ELLIPSIS = "…"
MAX_TEXT = 400  # characters any text is cut to before it is measured: bounds the work, not the look
_CACHE_SIZE = 4096  # rendered bitmaps; a 64-token picture needs ~130, so several captures fit
_cache: OrderedDict[tuple[str, int, bool, bool], np.ndarray] = OrderedDict()
_lock = threading.Lock()  # FreeType faces are not safe to use from two threads at once


@lru_cache(maxsize=32)
def _font(size: int, bold: bool) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(BOLD if bold else FONT), size)


def line_height(size: int) -> int:
    """Pixels from one baseline to the next for a font ``size`` (in pixels)."""
    ascent, descent = _font(size, False).getmetrics()
    return ascent + descent


def ascent(size: int) -> int:
    """Pixels from the top of a line of text to its baseline, for a font ``size`` (in pixels)."""
    return _font(size, False).getmetrics()[0]


def bitmap(text: str, size: int, rotate: bool = False, bold: bool = False) -> np.ndarray:
    """The alpha mask of one line of text, cached by ``(text, size, rotate, bold)``.

    Shape:
        returns ``(line_height, width)`` uint8, or ``(width, line_height)`` when ``rotate`` (reading
        upwards, as a rotated axis label).
    """
    key = (text[:MAX_TEXT], size, rotate, bold)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
        font = _font(size, bold)
        ascent, descent = font.getmetrics()
        image = Image.new("L", (_width(font, key[0]), ascent + descent))
        ImageDraw.Draw(image).text((0, 0), key[0], font=font, fill=255)
        mask = np.asarray(image)
        mask = np.ascontiguousarray(np.rot90(mask)) if rotate else mask.copy()
        mask.flags.writeable = False
        _cache[key] = mask
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return mask


@lru_cache(maxsize=1024)  # ~9 KB a label: a few MB at most
def tint(
    text: str, size: int, rotate: bool, bold: bool, color: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bitmap` in ``color``, ready to blend: ``(255 − alpha, colour × alpha + 127)`` as uint16.

    A label is blended into many pictures (every capture redraws the same ticks and titles); with
    these kept, blending is one multiply, one add and one division by 255 per pixel.
    """
    alpha = bitmap(text, size, rotate, bold)[:, :, None].astype(np.uint16)
    add = np.asarray(color, dtype=np.uint16) * alpha + 127
    inverse = 255 - alpha
    inverse.flags.writeable = add.flags.writeable = False
    return inverse, add


@lru_cache(maxsize=_CACHE_SIZE)
def width(text: str, size: int, bold: bool = False) -> int:
    """The width of :func:`bitmap`'s mask of ``text``, measured without rasterising it (wrapping and
    fitting measure many candidate lines that are never drawn)."""
    with _lock:
        return _width(_font(size, bold), text[:MAX_TEXT])


def _width(font: ImageFont.FreeTypeFont, text: str) -> int:
    return max(1, math.ceil(font.getlength(text)) + 1)


def shorten(text: str, chars: int) -> str:
    """``text`` in at most ``chars`` characters, the middle replaced by "…" (cut at a dot where one is
    near, so ``model.bert.encoder.layer.11.attention.self`` keeps its first and last parts)."""
    if len(text) <= chars:
        return text
    if chars <= 1:
        return ELLIPSIS[:chars]
    tail = (chars - 1) * 3 // 5  # the end of a module path says which one it is
    head = chars - 1 - tail
    start, end = text[:head], text[len(text) - tail :]
    dot = start.rfind(".")
    if dot >= head // 2:  # end the head after a dot rather than in a word
        start, end = start[: dot + 1], text[len(text) - tail - (head - dot - 1) :]
    return start + ELLIPSIS + end


def fit(text: str, size: int, max_width: int, bold: bool = False) -> str:
    """``text`` shortened in the middle until it is at most ``max_width`` pixels wide."""
    text = shorten(text, MAX_TEXT)
    if width(text, size, bold) <= max_width:
        return text
    low, high = 1, len(text) - 1  # the longest shortening that fits, by bisection
    while low < high:
        mid = (low + high + 1) // 2
        if width(shorten(text, mid), size, bold) <= max_width:
            low = mid
        else:
            high = mid - 1
    return shorten(text, low)


def wrap(text: str, size: int, max_width: int, max_lines: int = 3) -> list[str]:
    """Lines of at most ``max_width`` pixels, broken after ``·``, ``;`` or spaces; what does not fit in
    ``max_lines`` is shortened in the middle of the last line."""
    words = shorten(text, MAX_TEXT).replace(" · ", " ·\u2009").split(" ")
    lines: list[str] = []
    for word in words:
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and width(joined, size) <= max_width:
            lines[-1] = joined
        else:
            lines.append(word)
    lines = [line.replace("\u2009", " ").strip() for line in lines]
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], " ".join(lines[max_lines - 1 :])]
    return [fit(line, size, max_width) for line in lines]
