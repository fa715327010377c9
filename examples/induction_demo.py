"""Induction heads forming during training, watched by the monitor's role scores.

A 2-layer attention-only transformer (d = 64, 4 heads, 32 tokens) learns sequences of random tokens that
hold one repeated segment (6–12 tokens, copied to a random later place). The second copy can only be
predicted in context: by a head that finds the earlier occurrence of the current token and reads the
token after it — an induction head, fed by a previous-token head in the layer below (Olsson et al.
2022). Every ``--every`` steps a validation run logs the in-context loss on held-out sequences (the loss
on the second copy, its first token excepted) and the monitor captures its fixed samples (the first
rows of that validation data), logging each head's role scores.

Run: ``python examples/induction_demo.py [--steps 4000] [--every 100] [--out docs]`` (CPU, a few minutes).
Writes ``<out>/induction_phase_change.png``, drawn from the event file: the in-context loss, the
layer-1 induction score and the layer-0 previous-token score of the strongest head over training, and
the phase changes the monitor reported; prints the same numbers.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_attnviz import AttentionMonitor

VOCAB, LENGTH, WIDTH, HEADS = 64, 32, 64, 4


def repeated_segments(n: int, seed: int) -> TensorDataset:
    """``(tokens, in_context)``: random tokens with one segment of 6–12 copied to a random later place,
    and True at the copy's tokens that the copy itself makes predictable (all but its first)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    size = torch.randint(6, 13, (n, 1), generator=g)
    first = (torch.rand(n, 1, generator=g) * (LENGTH - 2 * size + 1)).long()
    copy = first + size + (torch.rand(n, 1, generator=g) * (LENGTH - 2 * size - first + 1)).long()
    pos = torch.arange(LENGTH)[None]
    inside = (pos >= copy) & (pos < copy + size)
    tokens = tokens.gather(1, torch.where(inside, pos - copy + first, pos))
    return TensorDataset(tokens, inside & (pos > copy))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.out = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2) for t in self.qkv(x).split(C, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, C / H)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class AttentionOnly(pl.LightningModule):
    """Embeddings, two attention layers on the residual stream, unembedding: no MLP, no norm."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Embedding(LENGTH, WIDTH)
        self.layers = nn.ModuleList([Attention(), Attention()])
        self.unembed = nn.Linear(WIDTH, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx) + self.position(torch.arange(idx.shape[1], device=idx.device))
        for layer in self.layers:
            x = x + layer(x)
        return self.unembed(x)

    def losses(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token losses ``(B, T - 1)`` and where they are in context."""
        tokens, in_context = batch
        losses = F.cross_entropy(self(tokens)[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
        return losses, in_context[:, 1:]

    def training_step(self, batch, batch_idx):
        losses, _ = self.losses(batch)
        self.log("train_loss", losses.mean())
        return losses.mean()

    def validation_step(self, batch, batch_idx):
        losses, in_context = self.losses(batch)
        self.log("in_context_loss", losses[in_context].mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def train(steps: int, every: int, lr: float, seed: int, log_dir: Path) -> tuple[Path, list[str]]:
    """The fit; the event file's directory and the phase-change warnings the monitor raised."""
    pl.seed_everything(seed, verbose=False)
    train_data = DataLoader(repeated_segments(steps * 32, seed), batch_size=32, shuffle=False)
    held_out = DataLoader(repeated_segments(256, seed + 1), batch_size=256)
    # a capture at every validation run; only what the picture needs is drawn
    monitor = AttentionMonitor(plots=["stats"], dashboard=False, save_captures=False, histograms=False)
    logger = TensorBoardLogger(log_dir, name="induction", version=0)
    trainer = pl.Trainer(
        max_steps=steps,
        val_check_interval=every,
        logger=logger,
        callbacks=[monitor],
        log_every_n_steps=every,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        trainer.fit(AttentionOnly(lr), train_data, held_out)
    said = [str(w.message) for w in caught if "phase change" in str(w.message)]
    return Path(logger.log_dir), said


def read(log_dir: Path) -> dict:
    """The curves and the phase changes, as logged."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    curve = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]  # noqa: E731
    changes = []
    if "attention/phase_changes/text_summary" in events.Tags()["tensors"]:
        for e in events.Tensors("attention/phase_changes/text_summary"):
            table = e.tensor_proto.string_val[0].decode()
            for row in re.findall(r"^\| (\S+) \| (\d+) \| (\w+) \| (\d+) → (\d+) \| (.+?) \|$", table, re.M):
                changes.append(row)
    return {
        "in_context_loss": curve("in_context_loss"),
        "induction": curve("attention_roles/induction/layers.1/max"),
        "previous_token": curve("attention_roles/previous_token/layers.0/max"),
        "changes": changes,
    }


def last_before(curve: list[tuple[int, float]], step: int) -> float:
    """The value logged last at or before ``step``."""
    return max(((s, v) for s, v in curve if s <= step), default=(0, float("nan")))[1]


def plot(curves: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = {"induction": "#c53a32", "previous_token": "#519e3e"}
    fig = Figure(figsize=(9, 5.6))
    FigureCanvasAgg(fig)
    loss_ax, role_ax = fig.subplots(2, 1, sharex=True)
    loss_ax.plot(*zip(*curves["in_context_loss"], strict=True), color="#3b75af", marker=".", markersize=3)
    loss_ax.set(ylabel="in-context loss (nats)", title="held-out loss on the repeated segment's second copy")
    for role, label in (
        ("induction", "induction score, layer 1 (strongest head)"),
        ("previous_token", "previous-token score, layer 0 (strongest head)"),
    ):
        role_ax.plot(
            *zip(*curves[role], strict=True), color=colors[role], label=label, marker=".", markersize=3
        )
    role_ax.set(xlabel="training step", ylabel="role score", ylim=(0, 1))
    groups: dict[tuple, list] = {}  # heads of a layer whose change was reported at the same capture
    for layer, head, role, step_from, step_to, scores in curves["changes"]:
        groups.setdefault((role, layer, int(step_to)), []).append((head, int(step_from), scores))
    for i, ((role, layer, stop), heads) in enumerate(sorted(groups.items(), key=lambda g: g[0][2])):
        color = colors.get(role, "#777777")
        start = min(h[1] for h in heads)
        for ax in (loss_ax, role_ax):
            ax.axvspan(start, stop, color=color, alpha=0.07, linewidth=0)
            ax.axvline(stop, color=color, linestyle=":", linewidth=1)
        names = ", ".join(h[0] for h in heads)
        text = f"{role}: {layer} head{'s' if len(heads) > 1 else ''} {names}, {start}→{stop}"
        role_ax.annotate(text, (stop - 30, 0.95 - 0.09 * i), fontsize=7, color=color, ha="right", va="top")
    role_ax.set_title("role scores logged by AttentionMonitor; dotted: the phase changes it reported")
    role_ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--logs", type=Path, default=None, help="keep the TensorBoard logs here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        log_dir, said = train(args.steps, args.every, args.lr, args.seed, args.logs or Path(tmp))
        curves = read(log_dir)
    print("step  in-context loss  induction (layer 1)  previous-token (layer 0)")
    for (step, induction), (_, previous) in zip(curves["induction"], curves["previous_token"], strict=True):
        loss = last_before(curves["in_context_loss"], step)
        print(f"{step:>5}  {loss:>15.3f}  {induction:>19.2f}  {previous:>24.2f}")
    for message in said:
        print(message)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(curves, args.out / "induction_phase_change.png")
    print(f"wrote {args.out / 'induction_phase_change.png'}")


if __name__ == "__main__":
    main()
