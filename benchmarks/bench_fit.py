"""Whole-fit cost of AttentionMonitor with its defaults: ``trainer.fit`` with the monitor over without.

The figure that matters to users: everything the monitor does during a fit (the extra forward, the
copies, drawing in its background process, writing, and waiting for the last capture's pictures at the
end of the fit) against the same fit without it. Runs are interleaved (plain, monitored, plain, ...)
and each is a fresh Python process fitting with the same seed; the median of each is reported, the
median of the ratios pair by pair (each monitored fit over the plain fit just before it: robust when the
machine's speed drifts), and the drawing process's CPU seconds per capture.

    python benchmarks/bench_fit.py            # GPT-style (4×4), ViT (4×4) and a 12-layer × 12-head model
    python benchmarks/bench_fit.py --quick    # smaller, for a quick look
    python benchmarks/bench_fit.py --busy 2   # on a busy machine: 2 other processes spinning throughout
    python benchmarks/bench_fit.py --every-n-steps 5   # step captures too (skipped under back-pressure)
    python benchmarks/bench_fit.py --nice 19  # the drawing's priority (ATTNVIZ_NICE; default 5)

"captures" counts the saved captures of the last monitored fit: every validation capture, and the
step captures that were not skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_attnviz import AttentionMonitor, PatchGrid


class Block(nn.Module):
    def __init__(self, d: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.attn = SelfAttention(d, heads, causal)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SelfAttention(nn.Module):
    """nanoGPT-style: fused SDPA."""

    def __init__(self, d: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class LitGPT(pl.LightningModule):
    def __init__(
        self, vocab: int = 256, d: int = 128, heads: int = 4, layers: int = 4, length: int = 256
    ) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(length, d))
        self.blocks = nn.Sequential(*[Block(d, heads, causal=True) for _ in range(layers)])
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.emb(ids) + self.pos[: ids.shape[1]]))

    def _loss(self, batch: tuple) -> torch.Tensor:
        x, y = batch  # nanoGPT's (inputs, next tokens): the monitor's default forward is self(x)
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def training_step(self, batch: tuple, _: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch: tuple, _: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-4)


class LitViT(pl.LightningModule):
    def __init__(self, d: int = 96, heads: int = 4, layers: int = 4, grid: int = 8, patch: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        self.cls, self.pos = (
            nn.Parameter(torch.zeros(1, 1, d)),
            nn.Parameter(torch.zeros(1, grid * grid + 1, d)),
        )
        self.blocks = nn.Sequential(*[Block(d, heads, causal=False) for _ in range(layers)])
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, 64, d)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.head(self.blocks(tokens)[:, 0])

    def training_step(self, batch: tuple, _: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple, _: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _tokens(
    g: torch.Generator, steps: int, val: int, length: int, batch: int
) -> tuple[DataLoader, DataLoader]:
    ids = torch.randint(0, 256, ((steps + val) * batch, length + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]
    cut = steps * batch
    return (
        DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch),
        DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=batch),
    )


def workload(name: str, quick: bool) -> tuple:
    g = torch.Generator().manual_seed(0)
    if name == "gpt":
        steps, val, length, batch = (12, 2, 128, 8) if quick else (60, 8, 256, 16)
        return (LitGPT, *_tokens(g, steps, val, length, batch), {})
    if name == "deep":  # 12 layers × 12 heads: the most pictures per capture (atlas 12×12, 24 heatmaps, ...)
        steps, val, length, batch = (8, 2, 64, 8) if quick else (40, 4, 128, 16)
        return (
            partial(LitGPT, d=192, heads=12, layers=12, length=length),
            *_tokens(g, steps, val, length, batch),
            {},
        )
    steps, val, batch = (10, 2, 32) if quick else (40, 4, 32)
    x = torch.randn((steps + val) * batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (len(x),), generator=g)
    train = DataLoader(TensorDataset(x[: steps * batch], y[: steps * batch]), batch_size=batch)
    valid = DataLoader(TensorDataset(x[steps * batch :], y[steps * batch :]), batch_size=batch)
    return LitViT, train, valid, {"image_grid": PatchGrid((8, 8), prefix_tokens=1, patch_size=(4, 4))}


def fit_seconds(
    name: str, monitored: bool, quick: bool, epochs: int, every_n_steps: int | None
) -> tuple[float, float, int]:
    module_cls, train, valid, options = workload(name, quick)
    pl.seed_everything(0, verbose=False)
    model = module_cls()
    monitor = AttentionMonitor(every_n_steps=every_n_steps, **options) if monitored else None
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_epochs=epochs,
            logger=TensorBoardLogger(tmp, name="bench"),
            callbacks=[monitor] if monitor else [],
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            accelerator="cpu",
        )
        start = time.perf_counter()
        trainer.fit(model, train, valid)
        seconds = time.perf_counter() - start
        draw, captures = 0.0, 0
        if monitor is not None:
            seen = monitor._seconds_per_capture  # measured by the drawing process
            draw = statistics.median(seen) if seen else float("nan")
            captures = len(list(Path(trainer.logger.log_dir).glob("attention_captures/step_*.npz")))
    return seconds, draw, captures


def run_one(
    name: str, monitored: bool, quick: bool, epochs: int, every: int | None
) -> tuple[float, float, int]:
    """One fit in a fresh Python process, as a user's script would run it: the monitor's drawing
    process starts inside that fit and is counted."""
    command = [sys.executable, __file__, "--one", name, "--epochs", str(epochs)]
    command += ["--monitored"] if monitored else []
    command += ["--quick"] if quick else []
    command += ["--every-n-steps", str(every)] if every else []
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, draw, captures = json.loads(result.stdout.strip().splitlines()[-1])
    return seconds, draw, captures


def spin(n: int) -> list[subprocess.Popen]:
    """``n`` processes that each keep a core busy (at the default priority) until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=["gpt", "vit", "deep"])
    parser.add_argument("--busy", type=int, default=0, help="other processes spinning throughout")
    parser.add_argument("--every-n-steps", type=int, default=None, help="the monitor's every_n_steps")
    parser.add_argument("--nice", type=int, default=None, help="the drawing's nice offset (ATTNVIZ_NICE)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--monitored", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    epochs = args.epochs or (2 if args.quick else 4)
    if args.one:
        print(json.dumps(fit_seconds(args.one, args.monitored, args.quick, epochs, args.every_n_steps)))
        return
    if args.nice is not None:
        os.environ["ATTNVIZ_NICE"] = str(args.nice)  # the fits run in processes of their own
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # the spinners end with us
    spinners = spin(args.busy)
    try:
        table(args, epochs)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def table(args: argparse.Namespace, epochs: int) -> None:
    columns = ("plain fit (s), median [min–max]", "with AttentionMonitor (s)", "ratio of medians")
    columns += ("pair ratios, median [min–max]", "drawing CPU s per capture", "captures")
    print(f"| workload | {' | '.join(columns)} |")
    print("|---|---|---|---|---|---|---|")
    for name in args.workloads:
        plain, watched, draws, captures = [], [], [], 0
        for _ in range(args.repeats):  # interleaved, each fit in a fresh process
            plain.append(run_one(name, False, args.quick, epochs, args.every_n_steps)[0])
            seconds, draw, captures = run_one(name, True, args.quick, epochs, args.every_n_steps)
            watched.append(seconds)
            draws.append(draw)
        p, w = statistics.median(plain), statistics.median(watched)
        label = f"{name} (quick)" if args.quick else name
        label += f", {args.busy} busy" if args.busy else ""
        spread = f"[{min(plain):.1f}–{max(plain):.1f}]", f"[{min(watched):.1f}–{max(watched):.1f}]"
        draw = statistics.median(draws)
        pairs = [b / a for a, b in zip(plain, watched, strict=True)]  # each over the plain fit before it
        pair = f"{statistics.median(pairs):.3f}× [{min(pairs):.2f}–{max(pairs):.2f}]"
        print(f"| {label} | {p:.1f} {spread[0]} | {w:.1f} {spread[1]} | {w / p:.3f}× | {pair} ", end="")
        print(f"| {draw:.2f} | {captures} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
