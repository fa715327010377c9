"""Watch a transformer learn to reverse a sequence: its attention turns into the anti-diagonal.

Trains a 2-layer ``nn.TransformerEncoder`` on a task it generates (output position i must read input
position L-1-i), logs attention pictures to TensorBoard every epoch, and prints how to open them.
Runs on a CPU in about two minutes.

    python examples/nlp_demo.py [--epochs 12] [--logdir runs]
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_attnviz import AttentionMonitor

VOCAB = list(string.ascii_lowercase[:16])  # token id i is drawn as letter i
SEQ_LEN = 12


def reversal_data(n: int, seed: int) -> TensorDataset:
    """Random letter sequences and their reversal: the right attention pattern is known in advance."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, len(VOCAB), (n, SEQ_LEN), generator=g)
    return TensorDataset(x, x.flip(1))


class Reverser(pl.LightningModule):
    def __init__(self, d_model: int = 64, heads: int = 4, layers: int = 2, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(len(VOCAB), d_model)
        self.pos = nn.Parameter(torch.randn(SEQ_LEN, d_model) * 0.1)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, len(VOCAB))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x) + self.pos))  # (B, L, vocab)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._loss(batch, "val")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--logdir", default="runs")
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    train = DataLoader(reversal_data(2048, seed=1), batch_size=64, shuffle=True)  # 32 steps an epoch
    val = DataLoader(reversal_data(512, seed=2), batch_size=128)
    logger = TensorBoardLogger(args.logdir, name="nlp_demo")
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        # log_sanity_check: the sanity check's capture (step 0) shows attention before training
        callbacks=[AttentionMonitor(tokens=VOCAB, samples=2, log_sanity_check=True)],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(Reverser(), train, val)
    tensorboard = Path(sys.executable).parent / "tensorboard"  # the one installed beside this Python
    print(
        f"\nTensorBoard logs: {logger.log_dir}\nOpen them with:\n"
        f"  {tensorboard} --logdir {args.logdir} --samples_per_plugin images=1000,attnviz=1000\n"
    )


if __name__ == "__main__":
    main()
