"""Watch a small Swin's windows over the image: each stage drawn on its own grid, the shift undone.

Trains a Hugging Face Swin (built from a small config, random weights) on the generated images of
``vision_demo.py`` (lighter clutter): one small white shape whose kind is the class. Its attention is
windowed: 4×4 windows over an 8×8 grid of 4-pixel patches, every other block shifted by two patches,
then a 4×4 stage (one window) after patch merging. The monitor puts each window back on the image
(the cyclic shift undone, keys outside a query's window hidden) and logs the attention over the image
per stage, every head, the layer × head statistics and the maps for the Attention tab. Runs on a CPU
in a few minutes.

    python examples/swin_demo.py [--epochs 10] [--logdir runs] [--docs docs]

``--docs DIR`` also writes the pictures of ``docs/layouts.md``: where a few patches look in a regular
and a shifted block (``swin_windows.png``), and the last overlay of each stage.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader
from vision_demo import CLASSES, MEAN, SIZE, STD, ImageClassifier, clutter_data, say_where

from lightning_attnviz import AttentionMonitor, capture_attention
from lightning_attnviz.capture.samples import unnormalize
from lightning_attnviz.render import layout
from lightning_attnviz.render.overlay import SCALE_NOTE, TICKS, blend
from lightning_attnviz.render.scale import _LUT

PATCH, WINDOW = 4, 4  # an 8×8 grid of 4×4-pixel patches in 4×4 windows; 4×4 after patch merging
QUERIES = ((0, 0), (3, 4), (5, 1), (7, 7))  # (row, col) of the patches whose windows are drawn


class LitSwin(ImageClassifier):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        import transformers as tf

        self.save_hyperparameters()
        config = tf.SwinConfig(
            image_size=SIZE, patch_size=PATCH, embed_dim=48, depths=[2, 2], num_heads=[2, 4],
            window_size=WINDOW, num_labels=len(CLASSES),
        )  # fmt: skip
        self.model = tf.SwinForImageClassification(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def window_picture(model: LitSwin, image: torch.Tensor) -> np.ndarray:
    """Where a few patches look in the first stage's regular block (top row) and shifted block
    (bottom row): each tile is one query patch's row of the captured map, head mean, over the image."""
    layers = [f"model.swin.encoder.layers.0.blocks.{b}.attention" for b in (0, 1)]
    model.eval()
    with torch.no_grad(), capture_attention(model, samples=1, modules=layers) as cap:
        model(image[None])
    picture = unnormalize(image, MEAN, STD)
    grid = SIZE // PATCH
    tiles, names = [], []
    for layer, block in zip(layers, ("regular", "shifted"), strict=True):
        weights = cap.maps[layer][0].mean(0).numpy()  # (L, L), head mean
        for row, col in QUERIES:
            heat = weights[row * grid + col].reshape(grid, grid)
            tiles.append(_enlarge(blend(picture, heat, (PATCH, PATCH)), 6))
            names.append([f"{block} block", f"patch {row},{col}"])
    title = ("Swin's first stage: where a patch looks", "windows placed back on the image, shift undone")
    note = (
        "each tile: one query patch's attention over the 8×8 patches (head mean); outside its window "
        f"the weight is 0; {SCALE_NOTE}"
    )
    return layout.grid(tiles, names, len(QUERIES), title, note, bar=(_LUT, TICKS)).image


def _enlarge(rgb: np.ndarray, k: int) -> np.ndarray:
    return rgb.repeat(k, axis=0).repeat(k, axis=1)


def write_docs(model: LitSwin, val: DataLoader, log_dir: str, docs: Path) -> None:
    """The pictures of ``docs/layouts.md``: the windows, and the last overlay of each stage."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    docs.mkdir(parents=True, exist_ok=True)
    image = next(iter(val))[0][0]
    Image.fromarray(window_picture(model, image)).save(docs / "swin_windows.png")
    events = EventAccumulator(log_dir, size_guidance={"images": 0})
    events.Reload()
    for stage in (0, 1):
        tag = f"attention/sample_0/model.swin.encoder.layers.{stage}.blocks.1.attention/overlay_heads"
        last = events.Images(tag)[-1].encoded_image_string
        Image.open(io.BytesIO(last)).save(docs / f"swin_overlay_stage{stage + 1}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--docs", type=Path, default=None, help="also write the pictures of docs/layouts.md")
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    clutter = dict(blobs=3, lines=2)  # lighter than vision_demo's: a small Swin learns it in minutes
    train = DataLoader(clutter_data(2048, seed=1, **clutter), batch_size=64, shuffle=True)  # 32 steps
    val = DataLoader(clutter_data(512, seed=2, **clutter), batch_size=256)
    logger = TensorBoardLogger(args.logdir, name="swin_demo")
    monitor = AttentionMonitor(
        # image_grid="auto" finds the Swin's first-stage grid; each stage is drawn on its own
        image_mean=MEAN,
        image_std=STD,
        samples=3,
        plots=("overlay", "overlay_heads", "stats"),  # no rollout: the stages lie on different grids
        log_sanity_check=True,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=logger,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    model = LitSwin()
    trainer.fit(model, train, val)
    if args.docs is not None:
        write_docs(model, val, logger.log_dir, args.docs)
    say_where(trainer, logger.log_dir, args.logdir)


if __name__ == "__main__":
    main()
