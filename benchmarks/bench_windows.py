"""Cost of capturing a Swin-T's windows (Hugging Face, 224 pixels, random weights), CPU.

    python benchmarks/bench_windows.py [--repeats 3] [--batch 8]

Training side: a forward inside ``capture_attention(defer=True)`` over the same forward without it (the
taps copy the sampled images' window q/k to the CPU). Drawing side: ``compute()`` of every layer's
pending inputs, the maps placed back on each stage's tokens, pooled to ``store_tokens=512`` as the
monitor does (stage 1: 3136 tokens, stage 2: 784) and exact. Ratios are against the plain forward
measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_attnviz import capture_attention
from lightning_attnviz.capture.inputs import compute


def _swin():
    import transformers as tf

    stages = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24])
    config = tf.SwinConfig(image_size=224, patch_size=4, window_size=7, **stages)
    return tf.SwinModel(config).eval()


def _seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, images = _swin(), torch.randn(args.batch, 3, 224, 224)

    def plain() -> None:
        with torch.no_grad():
            model(pixel_values=images)

    pending = []

    def captured() -> None:
        with torch.no_grad(), capture_attention(model, samples=2, defer=True) as cap:
            model(pixel_values=images)
        pending[:] = cap.pending

    plain()  # warm up
    base, taps = _seconds(plain, args.repeats), _seconds(captured, args.repeats)
    pooled = _seconds(lambda: [compute(p, 512, True) for p in pending], args.repeats)
    exact = _seconds(lambda: [compute(p) for p in pending], 1)
    print(f"Swin-T, 224 px, batch {args.batch}, {len(pending)} windowed layers, torch {torch.__version__}")
    print(f"forward                         {base * 1e3:8.0f} ms")
    print(f"forward with the taps           {taps * 1e3:8.0f} ms   ({taps / base:.2f}×)")
    print(f"compute, pooled to 512 + stats  {pooled * 1e3:8.0f} ms   ({pooled / base:.2f}× a forward)")
    print(f"compute, exact (3136² maps)     {exact * 1e3:8.0f} ms   ({exact / base:.2f}× a forward)")


if __name__ == "__main__":
    main()
