"""Does the monitor's logit-growth warning come before the loss blows up?

A small nanoGPT-style transformer without qk-normalisation is trained on a synthetic copy task with
AdamW and no warmup, at learning rates from sane to too high, a few seeds each. The monitor captures
every few steps; the script records the training loss at every step, the step at which the monitor's
logit warnings reached the training thread, and the largest attention logit at each capture (read
back from TensorBoard). The loss "spikes" at the first step whose loss exceeds twice the lowest loss
so far (or is not finite), after the first 20 steps. Lead time = spike step − warning step.

Run: ``python examples/divergence_demo.py [--steps 300] [--seeds 3] [--out docs]`` (CPU, minutes).
Writes ``<out>/divergence_logits.png`` (max logit and loss over steps, per learning rate) and prints a
table of lead times.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from models import GPT, GPTConfig

from lightning_attnviz import AttentionMonitor

VOCAB, LENGTH = 64, 32


def copy_task(n: int, seed: int) -> TensorDataset:
    """Sequences whose second half repeats the first: attention must find the earlier copy."""
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(1, VOCAB, (n, LENGTH // 2), generator=g)
    x = torch.cat([half, half], dim=1)
    return TensorDataset(x[:, :-1], x[:, 1:])


class LitLM(pl.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.model = GPT(GPTConfig(vocab_size=VOCAB, block_size=LENGTH, n_layer=2, n_head=4, n_embd=64))
        self.losses: list[float] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x).flatten(0, 1), y.flatten())
        self.losses.append(float(loss))
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, betas=(0.9, 0.95), weight_decay=0.0)


class WarningClock(pl.Callback):
    """Notes the training step at which each new monitor warning reached the training thread."""

    def __init__(self, caught: list) -> None:
        self.caught, self.seen, self.steps = caught, 0, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for w in self.caught[self.seen :]:
            if "attention logit" in str(w.message):
                self.steps.append((trainer.global_step, str(w.message)))
        self.seen = len(self.caught)


def spike_step(losses: list[float], after: int = 20) -> int | None:
    best = math.inf
    for step, loss in enumerate(losses):
        if step >= after and (not math.isfinite(loss) or loss > 2 * best):
            return step
        best = min(best, loss)
    return None


def run(lr: float, seed: int, steps: int, every: int, root: Path) -> dict:
    pl.seed_everything(seed, verbose=False)
    data = copy_task(32 * steps, seed)
    val = DataLoader(copy_task(8, 10_000 + seed), batch_size=8)
    caught: list = []
    clock = WarningClock(caught)
    logger = TensorBoardLogger(root, name=f"lr{lr:g}_seed{seed}", version=0)
    monitor = AttentionMonitor(
        every_n_steps=every, every_n_epochs=0, plots=["stats"], dashboard=False, save_captures=False
    )
    trainer = pl.Trainer(
        max_steps=steps,
        logger=logger,
        callbacks=[monitor, clock],
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    model = LitLM(lr)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        caught_list = record
        clock.caught = caught_list
        trainer.fit(model, DataLoader(data, batch_size=32), val)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    logit_tags = [t for t in events.Tags()["scalars"] if t.startswith("attention_health/max_logit/")]
    logits: dict[int, float] = {}
    for tag in logit_tags:
        for e in events.Scalars(tag):
            logits[e.step] = max(logits.get(e.step, -math.inf), e.value)
    # the capture step is in the message; warnings still being drawn at the end arrive at teardown
    messages = [str(w.message) for w in caught_list if "attention logit" in str(w.message)]
    captured = [int(m.group(1)) for msg in messages if (m := re.search(r"step (\d+)", msg))]
    return {
        "lr": lr,
        "seed": seed,
        "losses": model.losses,
        "logits": sorted(logits.items()),
        "spike": spike_step(model.losses),
        "warned_at": clock.steps[0][0] if clock.steps else None,
        "captured_at": min(captured) if captured else None,
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    ax_logit, ax_loss = fig.subplots(1, 2)
    lrs = sorted({r["lr"] for r in results})
    colors = {
        lr: c for lr, c in zip(lrs, ["#3b75af", "#519e3e", "#ef8636", "#c53a32", "#8d69b8"], strict=False)
    }
    for r in results:
        steps, values = zip(*r["logits"], strict=True) if r["logits"] else ((), ())
        label = f"lr {r['lr']:g}" if r["seed"] == results[0]["seed"] else None
        ax_logit.plot(steps, values, color=colors[r["lr"]], alpha=0.8, label=label)
        ax_loss.plot(r["losses"], color=colors[r["lr"]], alpha=0.6, linewidth=0.8, label=label)
        if r["warned_at"] is not None:
            ax_logit.axvline(r["warned_at"], color=colors[r["lr"]], linestyle=":", linewidth=0.8)
        if r["spike"] is not None:
            ax_loss.axvline(r["spike"], color=colors[r["lr"]], linestyle="--", linewidth=0.8)
    ax_logit.set(yscale="log", xlabel="step", ylabel="largest attention logit (attention_health/max_logit)")
    ax_logit.set_title("max logit; dotted: the monitor's warning reached training")
    ax_loss.set(yscale="log", xlabel="step", ylabel="training loss")
    ax_loss.set_title("loss; dashed: loss spike (> 2× the lowest so far)")
    ax_logit.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2, 3e-2, 1e-1])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    torch.set_num_threads(4)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in args.lrs:
            for seed in range(args.seeds):
                r = run(lr, seed, args.steps, args.every, Path(tmp))
                results.append(r)
                lead = None if r["spike"] is None or r["warned_at"] is None else r["spike"] - r["warned_at"]
                print(
                    f"lr {lr:<6g} seed {seed}: warning captured at step {r['captured_at']}, "
                    f"reached training at {r['warned_at']}; loss spike at {r['spike']}; lead {lead} steps; "
                    f"final loss {np.nanmean(r['losses'][-10:]):.3f}; "
                    f"max logit {max((v for _, v in r['logits']), default=float('nan')):.1f}",
                    flush=True,
                )
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "divergence_logits.png")
    print(f"wrote {args.out / 'divergence_logits.png'}")


if __name__ == "__main__":
    main()
