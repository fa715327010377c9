"""What AttentionMonitor costs where it runs: idle training steps, and validation epochs that capture.

    python benchmarks/bench_scale.py [--seqs 256 1024 4096] [--repeats 3]

1. Idle cost: training steps with the callback attached but not capturing (no taps are installed
   between captures) vs the same fit without it.
2. A validation epoch that captures vs a plain one, GPT-style model (fused SDPA, B=16, samples=2): time
   on the training thread (until the validation epoch ends) and, separately, the time the background
   writer then needs to draw and write the pictures.
All ratios are against the baseline measured in the same run, interleaved.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_capture import Block

from lightning_attnviz import AttentionMonitor


class LitGPT(pl.LightningModule):
    def __init__(self, layers: int, d: int, heads: int, vocab: int = 64, seq: int = 4096) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.zeros(seq, d))
        self.blocks = torch.nn.Sequential(*[Block(d, heads, eager=False) for _ in range(layers)])
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(idx) + self.pos[: idx.shape[1]]))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x).flatten(0, 1), y.flatten()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class Clock(pl.Callback):
    """Timestamps of the validation epoch, placed after AttentionMonitor in the callback list."""

    def on_validation_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def _trainer(logdir: str, callbacks: list, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        logger=TensorBoardLogger(logdir, name="bench"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
        **kwargs,
    )


def _data(n: int, seq: int) -> DataLoader:
    x = torch.randint(0, 64, (n, seq), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.roll(-1, 1)), batch_size=16)


def idle_steps(repeats: int, steps: int = 30) -> tuple[float, float]:
    times: dict[str, list[float]] = {"plain": [], "monitor": []}
    for _ in range(repeats):
        for name in times:
            callbacks = [AttentionMonitor(every_n_epochs=0)] if name == "monitor" else []
            with tempfile.TemporaryDirectory() as logdir:
                trainer = _trainer(logdir, callbacks, max_steps=steps, limit_val_batches=0)
                model = LitGPT(layers=2, d=128, heads=4)
                start = time.perf_counter()
                trainer.fit(model, _data(16 * steps, 128))
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["plain"]), statistics.median(times["monitor"])


def validation_epoch(seq: int, repeats: int, batches: int = 2) -> dict[str, float]:
    out: dict[str, list[float]] = {"plain": [], "monitor": [], "writer": []}
    model = LitGPT(layers=4, d=128, heads=4, seq=seq)
    data = _data(16 * batches, seq)
    for _ in range(repeats):
        for name in ("plain", "monitor"):
            clock = Clock()
            callbacks = (
                [AttentionMonitor(plots=["heatmap", "heads", "atlas"]), clock]
                if name == "monitor"
                else [clock]
            )
            with tempfile.TemporaryDirectory() as logdir:
                trainer = _trainer(logdir, callbacks)
                start = time.perf_counter()
                trainer.validate(model, data, verbose=False)
                total = time.perf_counter() - start
            out[name].append(clock.end - clock.start)
            if name == "monitor":
                out["writer"].append(total - (clock.end - start))
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seqs", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--val-batches", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    plain, monitor = idle_steps(args.repeats)
    print("| idle training steps (30 steps, 2-layer GPT, d=128, L=128, B=16) | without | with | ratio |")
    print("|---|---|---|---|")
    print(f"| fit time (s) | {plain:.2f} | {monitor:.2f} | {monitor / plain:.3f}x |\n")
    print(
        "| validation epoch that captures (4 layers, 4 heads, d=128, B=16, samples=2) "
        "| plain (s) | with capture (s) | ratio | writer thread afterwards (s) |"
    )
    print("|---|---|---|---|---|")
    for batches in args.val_batches:
        for seq in args.seqs:
            r = validation_epoch(seq, args.repeats, batches)
            print(
                f"| L={seq}, {batches} batches | {r['plain']:.2f} | {r['monitor']:.2f} | "
                f"{r['monitor'] / r['plain']:.2f}x | {r['writer']:.2f} |"
            )


if __name__ == "__main__":
    main()
