"""Watch a tiny ViT find the object: its CLS attention moves from everywhere onto one small shape.

Trains a hand-written vision transformer on images it generates: coloured clutter (soft blobs and
thin lines) with one small white shape at a random spot, whose shape (square, cross or ring) is the
class, so the CLS token has to find the shape and read it. Logs the CLS attention over the image per
layer and head, the attention rollout, the atlas, the evolution strips and the layer × head matrices of
the attention statistics to TensorBoard every epoch (and at step 0), and
prints how to open them. Runs on a CPU in about half a minute.

    python examples/vision_demo.py [--epochs 6] [--logdir runs]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_attnviz import AttentionMonitor, PatchGrid

CLASSES = ("square", "cross", "ring")
SIZE, PATCH = 32, 4  # 32×32 pixels cut into an 8×8 grid of 4×4 patches
OBJECT = 6  # side of the object in pixels: it straddles 2 to 3 patches each way
MEAN, STD = (0.36, 0.36, 0.36), (0.18, 0.18, 0.18)  # roughly the data's: undone again for the pictures


def _shapes() -> torch.Tensor:
    """One OBJECT×OBJECT mask per class."""
    square = torch.ones(OBJECT, OBJECT)
    cross = torch.zeros(OBJECT, OBJECT)
    cross[:, OBJECT // 2 - 1 : OBJECT // 2 + 1] = 1  # arms two pixels thick
    cross[OBJECT // 2 - 1 : OBJECT // 2 + 1, :] = 1
    ring = torch.ones(OBJECT, OBJECT)
    ring[1:-1, 1:-1] = 0
    return torch.stack([square, cross, ring])  # (classes, OBJECT, OBJECT)


def clutter_data(n: int, seed: int, blobs: int = 6, lines: int = 4) -> TensorDataset:
    """Clutter with one shape in it; only the shape tells the class, so the model has to find it."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    image = 0.15 + 0.25 * torch.rand(n, 3, 1, 1, generator=g)  # (N, 3, H, W) dim background
    image = image + 0.04 * torch.randn(n, 3, SIZE, SIZE, generator=g)

    def paint(alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:  # alpha (N, H, W), colour (N, 3)
        return image * (1 - alpha[:, None]) + colour[:, :, None, None] * alpha[:, None]

    for _ in range(blobs):  # soft round blobs of any colour
        cy, cx = (SIZE * torch.rand(n, 1, 1, generator=g) for _ in range(2))
        sigma = 1.5 + 3 * torch.rand(n, 1, 1, generator=g)
        alpha = 0.9 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        image = paint(alpha, torch.rand(n, 3, generator=g))
    for _ in range(lines):  # thin straight lines of any colour, some nearly white: crisp like the object
        a = SIZE * torch.rand(n, 2, 1, 1, generator=g)  # (N, 2, 1, 1) start (y, x)
        d = SIZE * torch.rand(n, 2, 1, 1, generator=g) - a  # start to end
        # the point of the segment nearest to each pixel is a + t * d with t in [0, 1]
        t = ((yy - a[:, 0]) * d[:, 0] + (xx - a[:, 1]) * d[:, 1]) / (d**2).sum(1).clamp(min=1e-6)
        t = t.clamp(0, 1)  # (N, H, W)
        dist = torch.hypot(yy - a[:, 0] - t * d[:, 0], xx - a[:, 1] - t * d[:, 1])
        image = paint((1.2 - dist).clamp(0, 1), torch.rand(n, 3, generator=g))

    label = torch.randint(0, len(CLASSES), (n,), generator=g)
    top, left = (torch.randint(1, SIZE - OBJECT, (n,), generator=g) for _ in range(2))
    rows = (top[:, None] + torch.arange(OBJECT))[:, :, None]  # (N, OBJECT, 1)
    cols = (left[:, None] + torch.arange(OBJECT))[:, None, :]  # (N, 1, OBJECT)
    mask = torch.zeros(n, SIZE, SIZE)
    mask[torch.arange(n)[:, None, None], rows, cols] = _shapes()[label]
    image = paint(mask, 0.9 + 0.1 * torch.rand(n, 3, generator=g))  # near white, fully opaque
    image = image.clamp(0, 1)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return TensorDataset((image - mean) / std, label)


class SelfAttention(nn.Module):
    """Multi-head self-attention, nanoGPT style: one qkv projection, then the fused kernel."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, L, C)
        q, k, v = (t.view(B, L, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, L, E)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, E)
        return self.proj(y.transpose(1, 2).reshape(B, L, C))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageClassifier(pl.LightningModule):
    """Training shared by the image demos: cross-entropy over CLASSES, AdamW at ``hparams.lr`` with a
    cosine decay; subclasses define ``forward``."""

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._loss(batch, "val")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        # decay to 0 over the run: the last epochs settle instead of jumping around at full rate
        steps = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class TinyViT(ImageClassifier):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 3, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + (SIZE // PATCH) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, rows * cols, dim), row-major
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), patches], dim=1) + self.pos  # (B, 1 + N, dim)
        return self.head(self.norm(self.blocks(tokens))[:, 0])  # the classifier reads only CLS



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--logdir", default="runs")
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    train = DataLoader(clutter_data(2048, seed=1), batch_size=64, shuffle=True)  # 32 steps an epoch
    val = DataLoader(clutter_data(512, seed=2), batch_size=256)
    logger = TensorBoardLogger(args.logdir, name="vision_demo")
    monitor = AttentionMonitor(
        # a hand-written ViT: say where its tokens sit (CLS first, then the patches row by row)
        image_grid=PatchGrid(grid=(SIZE // PATCH, SIZE // PATCH), prefix_tokens=1, patch_size=(PATCH, PATCH)),
        image_mean=MEAN,  # undo the normalisation, so the pictures show the images as generated
        image_std=STD,
        samples=3,
        # the defaults (overlay, rollout, atlas, evolution, stats) and every head over the image
        plots=("overlay", "overlay_heads", "rollout", "atlas", "evolution", "stats"),
        log_sanity_check=True,  # step 0: attention before training
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyViT(), train, val)
    say_where(trainer, logger.log_dir, args.logdir)


def say_where(trainer: pl.Trainer, log_dir: str, logdir: str) -> None:
    """The accuracy reached, and how to open the logs."""
    tensorboard = Path(sys.executable).parent / "tensorboard"  # the one installed beside this Python
    print(
        f"\nValidation accuracy: {trainer.callback_metrics['val/acc']:.3f}\n"
        f"TensorBoard logs: {log_dir}\nOpen them with:\n"
        f"  {tensorboard} --logdir {logdir} --samples_per_plugin images=1000,attnviz=1000\n"
    )


if __name__ == "__main__":
    main()
