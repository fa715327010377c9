"""Cost of AttentionMonitor on the NLP demo model, event-file growth, and rendering times.

    python benchmarks/bench_callback.py [--repeats 5]

Ratios are against the same work without the callback, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from nlp_demo import VOCAB, Reverser, reversal_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import _trainer

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.render.maps import atlas, head_grid, heatmap


def _event_bytes(logdir: str) -> int:
    return sum(p.stat().st_size for p in Path(logdir).rglob("events.out.tfevents.*"))


def validation_epoch(repeats: int) -> dict[str, float]:
    """trainer.validate() of the demo model, pictures included (validate waits for the writer)."""
    val = torch.utils.data.DataLoader(reversal_data(512, seed=2), batch_size=128)
    model = Reverser()
    times: dict[str, list[float]] = {"plain": [], "monitor": []}
    for _ in range(repeats):
        for name in times:
            callbacks = [AttentionMonitor(tokens=VOCAB)] if name == "monitor" else []
            with tempfile.TemporaryDirectory() as logdir:
                trainer = _trainer(logdir, callbacks)
                start = time.perf_counter()
                trainer.validate(model, val, verbose=False)
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def fit(epochs: int) -> dict[str, float]:
    """A whole demo fit: rendering overlaps training; and the bytes each capture adds to the events."""
    out: dict[str, float] = {}
    for name in ("plain", "monitor"):
        pl.seed_everything(0, verbose=False)
        train = torch.utils.data.DataLoader(reversal_data(2048, seed=1), batch_size=64, shuffle=True)
        val = torch.utils.data.DataLoader(reversal_data(512, seed=2), batch_size=128)
        callbacks = [AttentionMonitor(tokens=VOCAB)] if name == "monitor" else []
        with tempfile.TemporaryDirectory() as logdir:
            trainer = _trainer(logdir, callbacks, max_epochs=epochs)
            start = time.perf_counter()
            trainer.fit(Reverser(), train, val)
            out[f"{name}_s"] = time.perf_counter() - start
            out[f"{name}_bytes"] = _event_bytes(logdir)
    out["bytes_per_capture"] = (out["monitor_bytes"] - out["plain_bytes"]) / epochs
    return out


def render_times(repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)

    def view(heads: int, length: int) -> AttentionView:
        w = rng.random((heads, length, length)).astype(np.float32)
        w /= w.sum(-1, keepdims=True)
        labels = [f"tok{i}" for i in range(length)]
        return AttentionView("blocks.0.attn", 0, w, None, labels, labels)

    def best(fn) -> float:
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return min(samples) * 1000

    layers = [view(12, 64) for _ in range(12)]
    one = view(12, 64)
    return {
        "12 layers × 12 heads atlas, L=64": best(lambda: atlas(layers, "atlas")),
        "12-head grid + mean, L=64": best(lambda: head_grid(one, "grid")),
        "token-labelled 64×64 heatmap": best(
            lambda: heatmap(*one.head_mean(), one.q_labels, one.k_labels, "h")
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

    val = validation_epoch(args.repeats)
    whole = fit(args.epochs)
    renders = render_times(args.repeats)
    threads = torch.get_num_threads()
    print(f"NLP demo model (examples/nlp_demo.py), torch {torch.__version__}, {threads} threads\n")
    print("| measurement | without | with AttentionMonitor | ratio |")
    print("|---|---|---|---|")
    print(
        f"| `trainer.validate()` epoch, pictures written before it returns (s) | {val['plain']:.3f} | "
        f"{val['monitor']:.3f} | {val['monitor'] / val['plain']:.2f}x |"
    )
    print(
        f"| {args.epochs}-epoch fit, one capture per epoch (s) | {whole['plain_s']:.2f} | "
        f"{whole['monitor_s']:.2f} | {whole['monitor_s'] / whole['plain_s']:.2f}x |"
    )
    print(
        "| event-file bytes added per capture (2 samples × 2 layers: 16 images + 2 atlases, scalars, "
        "histograms, Attention-tab maps) | | "
        f"{whole['bytes_per_capture'] / 1024:.0f} KiB | |"
    )
    print("\n| rendering (best of repeats) | ms |\n|---|---|")
    for name, ms in renders.items():
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
