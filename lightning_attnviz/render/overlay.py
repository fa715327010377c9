"""Draw patch attention over the image it was computed on, as ``uint8`` RGB arrays ``(H, W, 3)``.

The heat is upsampled by whole patches (every patch tints exactly the pixels it was cut from) and
coloured on the scale of :mod:`lightning_attnviz.render.maps`: each patch's share of the heat against an even
spread over the patches, on a log scale, so an evenly spread heat reads as "uniform" and one patch as
"one-hot", and every head of a grid is on the same scale. Pictures are composed with
:mod:`lightning_attnviz.render.layout`: no matplotlib figure, nothing global touched.
"""

from __future__ import annotations

import math

import numpy as np

from lightning_attnviz.render import layout
from lightning_attnviz.render.scale import _LUT, UNIFORM_AT, levels

ALPHA = 0.6  # opacity of the heat at its maximum; it fades with the weight so the image shows through
ALPHA_MIN = 0.15  # opacity at zero weight: enough tint that "ignored" reads differently from "no data"
SATURATION = 0.35  # colour kept in the image under the heat: enough to recognise it, little enough that
# the tint reads as the colorbar says (yellow heat over a red object would otherwise look orange)
_SIDE = 224  # pixels the longest image side is scaled towards in a single overlay
_GRID_WIDTH = 400  # pixels a row of overlay tiles is scaled towards
TICKS = ((1.0, "one patch"), (UNIFORM_AT, "1/n  even"), (0.0, "≤ 1/n²"))
SCALE_NOTE = "colour: each patch's share vs an even 1/n over the n patches, log"


def upsample(
    heat: np.ndarray, image_size: tuple[int, int], patch_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Repeat each patch's value over the pixels of that patch (nearest, never interpolated across
    patches, so a one-patch peak stays one patch wide).

    Args:
        heat: one value per patch.
        image_size: ``(H, W)`` of the image the heat is drawn on.
        patch_size: ``(h, w)`` of a patch in pixels (``PatchGrid.patch_size``). Given, patch ``(i, j)``
            covers rows ``i*h … (i+1)*h - 1`` and columns ``j*w … (j+1)*w - 1``, as the model cut it; pixels
            no patch covers (a remainder the model dropped) are NaN. ``None``: the patches split the
            image evenly (exact when ``H`` and ``W`` are multiples of the grid).

    Shape:
        heat: ``(rows, cols)``; returns ``(H, W)`` float64.
    """
    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 2:
        raise ValueError(f"`heat` must be (rows, cols), got shape {heat.shape}")
    rows, cols = heat.shape
    height, width = (int(v) for v in image_size)
    if patch_size is None:
        return heat[(np.arange(height) * rows) // height][:, (np.arange(width) * cols) // width]
    ph, pw = (int(v) for v in patch_size)
    up = heat.repeat(ph, axis=0).repeat(pw, axis=1)[:height, :width]
    out = np.full((height, width), np.nan)
    out[: up.shape[0], : up.shape[1]] = up
    return out


def blend(image: np.ndarray, heat: np.ndarray, patch_size: tuple[int, int] | None = None) -> np.ndarray:
    """The image under the heat, at the image's resolution, on the uniform-relative scale.

    Opacity grows with the level, from :data:`ALPHA_MIN` to :data:`ALPHA`, so the patches the model
    reads are tinted yellow and the rest stay visible under a thin veil. The image is partly
    desaturated (:data:`SATURATION`) so the tint matches the colorbar; pixels no patch covers (NaN heat)
    get no tint.

    Shape:
        image: ``(H, W, 3)`` float in ``[0, 1]`` (see ``vision.unnormalize``); heat: ``(rows, cols)``;
        returns ``(H, W, 3)`` uint8.
    """
    image = _check_image(image)
    gray = image @ np.array([0.299, 0.587, 0.114])  # (H, W) luma
    image = (1 - SATURATION) * gray[..., None] + SATURATION * image
    heat = np.asarray(heat, dtype=np.float64)
    level = levels(heat.reshape(1, -1)).reshape(heat.shape)  # (rows, cols), NaN where not finite
    up = upsample(level, image.shape[:2], patch_size)
    color = _LUT[np.nan_to_num(up * 255).round().astype(np.uint8)] / 255.0
    alpha = np.where(np.isfinite(up), ALPHA_MIN + (ALPHA - ALPHA_MIN) * np.nan_to_num(up), 0.0)[..., None]
    return np.round(((1 - alpha) * image + alpha * color) * 255).astype(np.uint8)


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    title: layout.Title,
    note: str = "",
    patch_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """One heat map (a CLS row, a rollout, the mean received) over the image, with a colorbar.

    Args:
        image: the model input, displayable (``vision.unnormalize``).
        heat: one value per patch; the colorbar says the scale.
        title: drawn above the image (a string wraps, a sequence is one line per item).
        note: drawn at the bottom (how the heat was made).
        patch_size: see :func:`upsample`.

    Shape:
        image: ``(H, W, 3)``; heat: ``(rows, cols)``; returns ``(height, width, 3)`` uint8, the image
        scaled to about 400 pixels on its longest side.
    """
    blended = _fit(blend(image, heat, patch_size), _SIDE)
    h, w = blended.shape[:2]
    left = layout.PAD + 4
    width = max(left + w + 12 + layout.colorbar_width(TICKS) + layout.PAD, 360)
    top = layout.header_height(title, width)
    foot, foot_h = layout.footer(_notes(note), width)
    canvas = layout.Canvas(top + max(h, 120) + 4 + foot_h, width)
    canvas.paste(blended, left, top, "image")
    layout.colorbar(canvas, _LUT, left + w + 12, top, max(h, 120), TICKS)
    return layout.finish(canvas, title, foot).image


def overlay_grid(
    image: np.ndarray,
    heats: np.ndarray,
    title: layout.Title,
    note: str = "",
    patch_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Every head's heat over the image, plus the head mean as the last tile, all on one scale.

    Shape:
        image: ``(H, W, 3)``; heats: ``(heads, rows, cols)``; returns ``(height, width, 3)`` uint8.
    """
    heats = np.asarray(heats, dtype=np.float64)
    if heats.ndim != 3:
        raise ValueError(f"`heats` must be (heads, rows, cols), got shape {heats.shape}")
    maps = [*heats[:64], heats.mean(axis=0)]  # at most 64 heads drawn: the picture stays bounded
    names = [[f"head {h}"] for h in range(len(maps) - 1)] + [["mean"]]
    cols = math.ceil(math.sqrt(len(maps)))
    side = int(np.clip(_GRID_WIDTH // cols, 64, 200))
    # Shrink the image once, then blend each head at the tile's size: 13 full-size blends cost ~70 ms.
    image = _check_image(image)
    small = _fit(np.round(image * 255).astype(np.uint8), side) if max(image.shape[:2]) > side else None
    if small is not None:
        k = math.ceil(max(image.shape[:2]) / side)
        ph, pw = patch_size if patch_size is not None else (0, 0)
        patch_size = (ph // k, pw // k) if ph and pw and ph % k == pw % k == 0 else None
        image = small / 255.0
    tiles = [
        blend(image, m, patch_size) if small is not None else _fit(blend(image, m, patch_size), side)
        for m in maps
    ]
    return layout.grid(tiles, names, cols, title, _notes(note), bar=(_LUT, TICKS)).image


def _notes(note: str) -> str:
    return "; ".join(t for t in (note, f"{SCALE_NOTE}, more opaque where higher") if t)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"`image` must be (H, W, 3) RGB in [0, 1] (use vision.unnormalize), got shape {image.shape}"
        )
    return np.clip(image, 0.0, 1.0)


def _fit(rgb: np.ndarray, side: int) -> np.ndarray:
    """Scale by a whole factor towards ``side`` pixels on the longest side: repeat pixels to enlarge
    (patch edges stay sharp), average blocks to shrink."""
    longest = max(rgb.shape[:2])
    if longest < side:
        k = max(1, round(side / longest))
        return rgb.repeat(k, axis=0).repeat(k, axis=1)
    k = math.ceil(longest / side)
    if k == 1:
        return rgb
    h, w = rgb.shape[:2]
    padded = np.pad(rgb.astype(np.float64), ((0, -h % k), (0, -w % k), (0, 0)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)
