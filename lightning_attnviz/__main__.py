"""Re-render saved captures, or animate one sample's layer across training.

    python -m lightning_attnviz render LOGDIR/attention_captures/step_00000384.npz --out pictures/
    python -m lightning_attnviz gif LOGDIR/attention_captures --layer encoder.layers.1.self_attn --out a.gif

``render`` writes the pictures the callback logged for that capture (all but the evolution strip,
which needs the captures before it), named after their TensorBoard tags with ``/`` → ``__``.
``gif`` draws the head-mean heatmap of one sample and layer at every saved capture, in step order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.image import imsave
from PIL import Image

from lightning_attnviz.log import load_capture, picture_tag
from lightning_attnviz.render import PLOT_KINDS, heatmap, render_views


def render_file(path: Path, out: Path, plots: Sequence[str]) -> list[Path]:
    """Write the pictures of one saved capture as PNGs; returns their paths."""
    views, step, _ = load_capture(path)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for picture in render_views(views, step, [p for p in plots if p != "evolution"]):
        target = out / (picture_tag(picture).replace("/", "__") + ".png")
        imsave(target, picture.image)
        written.append(target)
    return written


def animate(directory: Path, layer: str, sample: int, out: Path, fps: float) -> int:
    """One head-mean heatmap per saved capture, as an animated GIF; returns the number of frames."""
    frames = []
    for path in sorted(directory.glob("step_*.npz")):
        views, step, epoch = load_capture(path)
        for view in views:
            if view.layer == layer and view.sample == sample:
                mean, visible = view.head_mean()
                title = f"{layer} · sample {sample} · step {step} · epoch {epoch} · head mean"
                frames.append(heatmap(mean, visible, view.q_labels, view.k_labels, title, view.note))
    if not frames:
        raise SystemExit(f"no capture of layer {layer!r}, sample {sample} in {directory}")
    height = max(f.shape[0] for f in frames)
    width = max(f.shape[1] for f in frames)
    padded = [
        np.pad(f, ((0, height - f.shape[0]), (0, width - f.shape[1]), (0, 0)), constant_values=255)
        for f in frames
    ]
    images = [Image.fromarray(f) for f in padded]
    images[0].save(out, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return len(images)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_attnviz",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="re-render one saved capture as PNG files")
    render.add_argument("capture", type=Path, help="a step_<step>.npz file")
    render.add_argument("--out", type=Path, default=Path("attention_pictures"))
    render.add_argument("--plots", nargs="+", default=list(PLOT_KINDS), choices=PLOT_KINDS)
    gif = commands.add_parser("gif", help="animate one sample's layer across the saved captures")
    gif.add_argument("captures", type=Path, help="the attention_captures directory")
    gif.add_argument("--layer", required=True)
    gif.add_argument("--sample", type=int, default=0)
    gif.add_argument("--out", type=Path, default=Path("attention.gif"))
    gif.add_argument("--fps", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.command == "render":
        for path in render_file(args.capture, args.out, args.plots):
            print(path)
    else:
        frames = animate(args.captures, args.layer, args.sample, args.out, args.fps)
        print(f"{args.out}: {frames} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
