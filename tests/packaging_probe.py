"""Run by tests/test_packaging.py inside a fresh virtualenv where only the built wheel (and what it
depends on) is installed: a copy of this file, run from a temporary folder, so nothing of the work tree
is importable. Prints one JSON object of facts for the test to check.

    python packaging_probe.py LOGDIR
"""

from __future__ import annotations

import json
import sys
import warnings
from importlib import metadata, resources

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_attnviz
from lightning_attnviz import AttentionMonitor

VOCAB = [f"w{i}" for i in range(16)]


class TinyLM(pl.LightningModule):
    """One nn.MultiheadAttention over embedded tokens: the smallest model the monitor draws."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB), 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, len(VOCAB))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)  # (B, L, D)
        return self.head(self.attn(x, x, x)[0])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x).flatten(0, 1), y.flatten()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_fit(logdir: str) -> str:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, len(VOCAB), (16, 8), generator=g)
    data = DataLoader(TensorDataset(x, x.roll(-1, dims=1)), batch_size=4)
    logger = TensorBoardLogger(logdir, name="tb", version=0)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[AttentionMonitor(tokens=VOCAB, plots=["heatmap"])],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about workers and log intervals
        trainer.fit(TinyLM(), data, data)
    return logger.log_dir


def main() -> None:
    log_dir = tiny_fit(sys.argv[1])
    events = EventAccumulator(log_dir, size_guidance={"images": 0})
    events.Reload()
    images = {
        tag: [(e.step, e.width, e.height) for e in events.Images(tag)] for tag in events.Tags()["images"]
    }
    package = resources.files("lightning_attnviz")
    facts = {
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
        "package_file": lightning_attnviz.__file__,
        "torch_file": torch.__file__,
        "torch": torch.__version__,
        "version": lightning_attnviz.__version__,
        "dist_version": metadata.version("lightning_attnviz"),
        "py_typed": package.joinpath("py.typed").is_file(),
        "static": sorted(p.name for p in package.joinpath("tab").joinpath("static").iterdir()),
        "entry_points": [(ep.name, ep.value) for ep in metadata.entry_points(group="tensorboard_plugins")],
        "log_dir": log_dir,
        "images": images,
    }
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
