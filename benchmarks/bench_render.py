"""Milliseconds and PNG bytes per picture, one thread, at the sizes the monitor draws (64 tokens).

Targets (2-core CI machine): heatmap ≤ 15 ms, heads grid of 8 ≤ 20 ms, atlas 12×12 ≤ 60 ms, arrows
≤ 15 ms, overlay ≤ 10 ms, encode_png of a 600×600 picture ≤ 10 ms. Times are the best of several runs
with the label cache warm, as it is from the second capture of a fit on.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from lightning_attnviz.analysis.views import AttentionView, LayerStats
from lightning_attnviz.render.maps import Strip, arrows, atlas, encode_png, evolution, head_grid, heatmap
from lightning_attnviz.render.overlay import overlay, overlay_grid
from lightning_attnviz.render.stats import render_stats

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "tokenizers",
    "split",
    "internationalization",
]


def make_view(length: int, heads: int, layer: str, seed: int = 0) -> AttentionView:
    rng = np.random.default_rng(seed)
    causal = np.tril(np.ones((length, length), dtype=bool))
    logits = np.where(causal, rng.normal(size=(heads, length, length)) * 2, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    labels = [WORDS[i % len(WORDS)] for i in range(length)]
    return AttentionView(layer, 0, weights.astype(np.float32), causal[None], labels, labels)


def best(fn: Callable[[], np.ndarray], repeat: int = 7) -> tuple[float, np.ndarray]:
    out = fn()  # warm the label cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3, out


def main() -> None:
    one = make_view(64, 8, "model.bert.encoder.layer.11.attention.self")
    layers = [make_view(64, 12, f"model.bert.encoder.layer.{i}.attention.self", i) for i in range(12)]
    mean, visible = one.head_mean()
    title = (one.layer, "sample 0 · step 384 · head mean")
    strip = Strip([mean] * 8, [32 * i for i in range(8)], list(range(10, 18)))
    rng = np.random.default_rng(0)
    image, heats = rng.random((224, 224, 3)), rng.random((12, 14, 14))
    stats = [
        LayerStats(f"blocks.{i}.attn", **{m: rng.random(12, dtype=np.float32) for m in LayerStats.METRICS})
        for i in range(12)
    ]
    cases = {
        "heatmap, 64 labelled tokens": lambda: heatmap(mean, visible, one.q_labels, one.k_labels, title),
        "heads grid, 8 heads + mean, L=64": lambda: head_grid(one, title),
        "atlas, 12 layers × 12 heads, L=64": lambda: atlas(layers, "sample 0 · step 384"),
        "evolution, 8 captures + Δ, L=64": lambda: evolution(strip, visible, title),
        "arrows, 64 tokens, top 3": lambda: arrows(mean, one.q_labels, one.k_labels, title),
        "overlay, 224×224 image, 14×14 patches": lambda: overlay(image, heats[0], title, "", (16, 16)),
        "overlay grid, 12 heads + mean": lambda: overlay_grid(image, heats, title, "", (16, 16)),
        "stats matrices, 12 × 12, every metric (size: the first)": lambda: render_stats(
            stats, None, 1, (0, stats, {})
        )[0].image,
    }
    print("| picture | size (H×W) | draw ms | encode_png ms | PNG bytes |")
    print("|---|---|---:|---:|---:|")
    for name, fn in cases.items():
        ms, picture = best(fn)
        encode_ms, _ = best(lambda p=picture: encode_png(p))
        size = len(encode_png(picture))
        print(f"| {name} | {picture.shape[0]}×{picture.shape[1]} | {ms:.1f} | {encode_ms:.1f} | {size:,} |")
    square = heatmap(mean[:40, :40], visible[:40, :40], one.q_labels[:40], one.k_labels[:40], title)
    square = np.pad(square, ((0, max(0, 600 - square.shape[0])), (0, max(0, 600 - square.shape[1])), (0, 0)))
    square = np.ascontiguousarray(square[:600, :600])
    print("\nPNG encoding of a 600×600 heatmap, by zlib level (encode_png uses 1):\n")
    print("| compress_level | ms | bytes |")
    print("|---:|---:|---:|")
    for level in (0, 1, 3, 6, 9):

        def encode(level: int = level) -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(square).save(buffer, "PNG", compress_level=level)
            return buffer.getvalue()

        ms, data = best(encode)  # type: ignore[arg-type]
        print(f"| {level} | {ms:.1f} | {len(data):,} |")
    ms, _ = best(lambda: encode_png(square))  # type: ignore[arg-type,return-value]
    print(f"| encode_png | {ms:.1f} | {len(encode_png(square)):,} |")


if __name__ == "__main__":
    main()
