"""Re-render saved captures, or animate one sample's layer across training.

    python -m lightning_attnviz render LOGDIR/attention_captures/step_00000384.npz --out pictures/
    python -m lightning_attnviz gif LOGDIR/attention_captures --layer encoder.layers.1.self_attn --out a.gif

``render`` draws the token pictures of one saved capture (all but the evolution strip, which needs the
captures before it) and, for vision runs, the overlays and rollout from the image saved with it;
``--format svg|pdf`` writes vector figures for papers (the same layout and colours, text as text).
Files are named after their TensorBoard tags (``/`` → ``__``, long names shortened with a hash).
``gif`` draws the head-mean heatmap of one sample and layer at every saved capture, in step order, on
one colour scale.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from lightning_attnviz.analysis.vision import cls_to_patches, mean_received, rollout
from lightning_attnviz.render import vector
from lightning_attnviz.render.canvas import Canvas, keep_canvases
from lightning_attnviz.render.maps import Picture, heatmap, render_views
from lightning_attnviz.render.overlay import overlay
from lightning_attnviz.render.plots import TOKEN_PLOTS
from lightning_attnviz.sinks.capture_file import CaptureFileError, SavedCapture, load_capture
from lightning_attnviz.sinks.tags import Tags

_VISION = ("overlay", "rollout")
PictureFormat = Literal["png"] | vector.VectorFormat  # the choices of `render --format`
MIN_FPS, MAX_FPS = 0.01, 100.0  # a GIF frame lasts a whole number of hundredths of a second, at most 655 s


def _file_name(tag: str, suffix: str) -> str:
    name = re.sub(r"[^\w.\-#]", "_", tag.replace("/", "__"))  # "#" stays: attn#1 is not attn_1
    if len(name.encode()) > 120:  # file systems refuse names over 255 bytes; keep them readable and unique
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[:100].decode(errors="ignore") + "-" + digest
    return name + suffix


def _vision_pictures(saved: SavedCapture, plots: Sequence[str]) -> list[Picture]:
    grid = saved.grid
    if grid is None or not saved.images:
        return []
    heat_of = cls_to_patches if grid.prefix_tokens else mean_received
    pictures = []
    for sample, image in enumerate(saved.images):
        views = [
            v for v in saved.views if v.sample == sample and not v.note and v.weights.shape[-1] == grid.length
        ]
        picture = image.astype(np.float64) / 255
        if "overlay" in plots:
            for v in views:
                title = (v.layer, f"sample {sample} · step {saved.step}")
                pictures.append(
                    Picture(
                        "overlay",
                        sample,
                        v.layer,
                        overlay(
                            picture,
                            heat_of(v.weights, grid).mean(axis=0),
                            title,
                            "head mean",
                            grid.patch_size,
                        ),
                    )
                )
        if "rollout" in plots and views:
            heat = heat_of(rollout([v.weights for v in views], prefix_tokens=grid.prefix_tokens)[None], grid)[
                0
            ]
            title = ("attention rollout", f"sample {sample} · step {saved.step}")
            pictures.append(
                Picture("rollout", sample, None, overlay(picture, heat, title, "", grid.patch_size))
            )
    return pictures


def render_file(path: Path, out: Path, plots: Sequence[str], fmt: PictureFormat = "png") -> list[Path]:
    """Write the pictures of one saved capture; returns their paths."""
    saved = _load(path)
    out.mkdir(parents=True, exist_ok=True)
    tags, written = Tags(), []
    token_plots = [p for p in plots if p in TOKEN_PLOTS and p != "evolution"]
    with keep_canvases() as canvases:  # each picture's layout, for the vector formats
        pictures = render_views(saved.views, saved.step, token_plots) + _vision_pictures(saved, plots)
    layouts = {id(c.image): c for c in canvases}
    for picture in pictures:
        target = out / _file_name(
            tags.picture(picture.kind, picture.sample, picture.layer, picture.head), f".{fmt}"
        )
        _save(picture.image, layouts.get(id(picture.image)), target, fmt)
        written.append(target)
    return written


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
        for view in saved.views:
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
        "render", help="re-render one saved capture (token pictures, overlays, rollout)"
    )
    render.add_argument("capture", type=Path, help="a step_<step>.npz file")
    render.add_argument("--out", type=Path, default=Path("attention_pictures"))
    kinds = [p for p in TOKEN_PLOTS if p != "evolution"] + list(_VISION)
    render.add_argument("--plots", nargs="+", default=kinds, choices=kinds)
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
            for path in render_file(args.capture, args.out, args.plots, args.format):
                print(path)
        else:
            print(f"{args.out}: {animate(args.captures, args.layer, args.sample, args.out, args.fps)} frames")
    except (CaptureFileError, OSError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
