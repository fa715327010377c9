"""Re-render saved captures, or animate one sample's layer across training.

    python -m lightning_attnviz render LOGDIR/attention_captures/step_00000384.npz --out pictures/
    python -m lightning_attnviz gif LOGDIR/attention_captures --layer encoder.layers.1.self_attn --out a.gif

``render`` draws one saved capture's pictures again, through the monitor's own drawing code: by default
every kind the run logged that a capture file holds what it needs for (the token pictures, each head's
heatmap, for vision runs the overlays and rollout over the image saved with it, and relevance), and says
on stderr why each other kind asked for is not drawn (the evolution strip needs the captures before it,
the stats matrices the scalars); it fails when it draws nothing. ``--format svg|pdf`` writes vector
figures for papers (the same layout and colours, text as text). Files are named after their TensorBoard
tags (``/`` → ``__``, long names shortened with a hash). ``gif`` draws the head-mean heatmap
of one sample and layer at every saved capture, in step order, on one colour scale, pooled as the
monitor's pictures are.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.capture.blocks import PICTURE_CELLS
from lightning_attnviz.pipeline.plan import drawn_views, view_groups
from lightning_attnviz.render import vector
from lightning_attnviz.render.layout import Canvas, keep_canvases
from lightning_attnviz.render.maps import heatmap
from lightning_attnviz.render.plots import ALL_PLOTS, IMAGE_PLOTS, PictureSettings, default_plots
from lightning_attnviz.sinks.capture_file import CaptureFileError, SavedCapture, load_capture
from lightning_attnviz.sinks.tags import Tags

PictureFormat = Literal["png"] | vector.VectorFormat  # the choices of `render --format`
MIN_FPS, MAX_FPS = 0.01, 100.0  # a GIF frame lasts a whole number of hundredths of a second, at most 655 s
# Kinds the monitor draws that one capture file cannot give back, and why.
_NOT_FROM_A_FILE = {
    "evolution": "it shows the captures before this one; `gif` animates a layer across the saved captures",
    "stats": "its layer × head matrices come from statistics over every row and from the previous "
    "capture, which a capture file does not hold (the scalars are in the event file)",
    "value_weighted": "it needs the values' norms, which a capture file does not hold",
}
CLI_PLOTS = (*ALL_PLOTS, "relevance")


def _file_name(tag: str, suffix: str) -> str:
    name = re.sub(r"[^\w.\-#]", "_", tag.replace("/", "__"))  # "#" stays: attn#1 is not attn_1
    if len(name.encode()) > 120:  # file systems refuse names over 255 bytes; keep them readable and unique
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[:100].decode(errors="ignore") + "-" + digest
    return name + suffix


def _why_not(saved: SavedCapture, kind: str) -> str | None:
    """Why ``kind`` cannot be drawn from ``saved``; ``None`` if it can."""
    if kind in _NOT_FROM_A_FILE:
        return _NOT_FROM_A_FILE[kind]
    if kind in IMAGE_PLOTS and saved.grid is None:
        return "the run had no patch grid (not a vision model, or `image_grid=None`)"
    if kind in IMAGE_PLOTS and not saved.images:
        return "the capture file holds no images"
    if kind == "relevance" and not saved.relevance:
        return "the run did not compute relevance (`relevance=True` does)"
    if kind == "rollout" and saved.grid is not None and not any(
        v.pooling is None and v.weights.shape[-1] == saved.grid.length for v in saved.views
    ):
        return (
            "rollout needs every layer's exact map over the patch grid, and this capture has none (maps "
            "pooled while capturing: a larger `store_tokens` keeps them)"
        )
    return None


def _settings(saved: SavedCapture) -> PictureSettings:
    """What the capture's pictures are drawn with (older files: their maps are the pictures' maps)."""
    plots = default_plots(None, saved.grid is not None)
    return saved.pictures or PictureSettings(plots, max_tokens=PICTURE_CELLS, grid=saved.grid)


def _drawn(saved: SavedCapture) -> list[AttentionView]:
    """The saved maps as the monitor's token pictures drew them."""
    return drawn_views(_settings(saved), saved.views)


def render_file(
    path: Path, out: Path, plots: Sequence[str] | None = None, fmt: PictureFormat = "png"
) -> tuple[list[Path], list[str]]:
    """Draw one saved capture's pictures again, through the monitor's own drawing code.

    Args:
        plots: the kinds to draw; ``None``: the kinds the run logged.

    Returns:
        the files written, and for each kind asked for that was not drawn, why.
    """
    saved = _load(path)
    settings = _settings(saved)
    asked = list(settings.plots if plots is None else plots)
    if saved.relevance and plots is None:
        asked.append("relevance")
    reasons = {k: why for k in asked if (why := _why_not(saved, k)) is not None}
    drawable = tuple(k for k in asked if k not in reasons)
    heads = settings.heads if plots is None or "heatmap" in plots else ()
    settings = replace(settings, plots=drawable, heads=heads)
    images = [image.astype(np.float64) / 255 for image in saved.images]
    labels = [None if x is None else list(x) for x in saved.labels]
    relevance = saved.relevance if "relevance" in drawable else ()
    drawn = drawn_views(settings, saved.views)
    groups = view_groups(settings, saved.views, drawn, images, saved.step, None, relevance, labels)
    out.mkdir(parents=True, exist_ok=True)
    tags, written, by_kind = Tags(), [], dict.fromkeys(drawable, 0)
    for kind, draw in groups:
        try:
            with keep_canvases() as canvases:  # each picture's layout, for the vector formats
                pictures = draw()
        except Exception as err:  # one kind failing never loses the others
            reasons[kind] = f"drawing failed ({type(err).__name__}: {err})"
            continue
        layouts = {id(c.image): c for c in canvases}
        for picture in pictures:
            target = out / _file_name(
                tags.picture(picture.kind, picture.sample, picture.layer, picture.head), f".{fmt}"
            )
            _save(picture.image, layouts.get(id(picture.image)), target, fmt)
            written.append(target)
            by_kind[kind] = by_kind.get(kind, 0) + 1
    for kind in drawable:
        if not by_kind.get(kind) and kind not in reasons:
            reasons[kind] = "no map of this capture is one it can be drawn from"
    return written, [f"{kind}: not drawn: {why}" for kind, why in reasons.items()]


def _save(image: np.ndarray, canvas: Canvas | None, target: Path, fmt: PictureFormat) -> None:
    """PNG as drawn; SVG and PDF as vector figures of the picture's layout (text as text)."""
    if fmt == "png":
        Image.fromarray(image).save(target)
        return
    if canvas is None:  # a picture drawn without the layout engine: its pixels, with no text to find
        canvas = Canvas(image.shape[0], image.shape[1])
        canvas.image = np.ascontiguousarray(image)
    vector.save(canvas, target, fmt)


def animate(directory: Path, layer: str, sample: int, out: Path, fps: float) -> int:
    """One head-mean heatmap per saved capture, as an animated GIF; returns the number of frames.

    A file that cannot be read (a partial write, a crafted file, a folder named like a capture) is
    skipped with one line on stderr; the rest are drawn.
    """
    if not directory.is_dir():
        raise CaptureFileError(f"{directory}: not a folder (give the attention_captures folder)")
    frames, layers, skipped = [], set(), 0
    for path in sorted(directory.glob("step_*.npz")):
        try:
            saved = _load(path)
        except CaptureFileError as err:
            skipped += 1
            print(f"skipped: {_one_line(err)}", file=sys.stderr)
            continue
        for view in _drawn(saved):
            layers.add(view.layer)
            if view.layer == layer and view.sample == sample:
                mean, visible = view.head_mean()
                # the step first: a narrow picture shortens its subtitle in the middle, and frames whose
                # titles lost the step would be identical (and merged into one by the GIF writer)
                title = (layer, f"step {saved.step} · epoch {saved.epoch} · sample {sample} · head mean")
                frames.append(heatmap(mean, visible, view.q_labels, view.k_labels, title, view.note))
    if not frames:
        known = ", ".join(sorted(layers)) or "none (no readable step_*.npz files)"
        unread = f"; {skipped} file(s) skipped" if skipped else ""
        raise CaptureFileError(
            f"{directory}: no capture of layer {layer!r}, sample {sample}; layers saved: {known}{unread}"
        )
    height, width = max(f.shape[0] for f in frames), max(f.shape[1] for f in frames)
    padded = [
        np.pad(f, ((0, height - f.shape[0]), (0, width - f.shape[1]), (0, 0)), constant_values=255)
        for f in frames
    ]
    images = [Image.fromarray(f) for f in padded]
    images[0].save(out, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return len(images)


def _load(path: Path) -> SavedCapture:
    if not path.is_file():
        raise CaptureFileError(f"{path}: not a file")
    return load_capture(path)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _fps(text: str) -> float:
    """Frames per second of a GIF: its frames last 0.01 s to 100 s (whole hundredths)."""
    try:
        fps = float(text)
    except ValueError:
        fps = math.nan
    if not MIN_FPS <= fps <= MAX_FPS:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number from {MIN_FPS} to {MAX_FPS:g}, got {text!r}")
    return fps


def _gif_path(text: str) -> Path:
    if not text.lower().endswith(".gif"):
        raise argparse.ArgumentTypeError(f"must be a file name ending in .gif, got {text!r}")
    return Path(text)


def _sample(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a sample index >= 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_attnviz",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser(
        "render", help="draw one saved capture's pictures again (token pictures, overlays, rollout)"
    )
    render.add_argument("capture", type=Path, help="a step_<step>.npz file")
    render.add_argument("--out", type=Path, default=Path("attention_pictures"))
    render.add_argument(
        "--plots", nargs="+", default=None, choices=CLI_PLOTS, help="default: the kinds the run logged"
    )
    render.add_argument("--format", default="png", choices=("png", "svg", "pdf"))
    gif = commands.add_parser("gif", help="animate one sample's layer across the saved captures")
    gif.add_argument("captures", type=Path, help="the attention_captures directory")
    gif.add_argument("--layer", required=True)
    gif.add_argument("--sample", type=_sample, default=0)
    gif.add_argument("--out", type=_gif_path, default=Path("attention.gif"), help="a .gif file")
    gif.add_argument("--fps", type=_fps, default=2.0, help=f"frames per second, {MIN_FPS} to {MAX_FPS:g}")
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            written, reasons = render_file(args.capture, args.out, args.plots, args.format)
            for path in written:
                print(path)
            for reason in reasons:
                print(reason, file=sys.stderr)
            if not written:
                print(f"error: {args.capture}: no picture drawn", file=sys.stderr)
                return 1
        else:
            print(f"{args.out}: {animate(args.captures, args.layer, args.sample, args.out, args.fps)} frames")
    except (CaptureFileError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
