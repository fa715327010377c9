"""Vision models through the real callback and Trainer: overlays, rollout and pixel distances logged."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_models import LitViT, image_loader, make_trainer, read_events
from torch import nn

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.capture.grid import PatchGrid


@pytest.mark.parametrize(
    ("kind", "layers"),
    [
        ("timm", ["vit.blocks.0.attn", "vit.blocks.1.attn"]),
        ("hf", ["vit.layers.0.attention", "vit.layers.1.attention"]),
    ],
)
def test_timm_and_hugging_face_vits_log_overlays(tmp_path, kind, layers):
    plots = ["overlay", "overlay_heads", "rollout", "heatmap", "heads", "evolution"]
    monitor = AttentionMonitor(image_mean=[0.5] * 3, image_std=[0.25] * 3, plots=plots, head_stats=True)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(LitViT(kind), image_loader(), image_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    tags = set(events.Tags()["images"])
    for sample in range(2):
        assert f"attention/sample_{sample}/rollout" in tags
        for layer in layers:
            for plot in ("overlay", "overlay_heads", "heatmap", "heads", "evolution"):
                assert f"attention/sample_{sample}/{layer}/{plot}" in tags
            assert f"attention/sample_{sample}/{layer}/arrows" not in tags  # not asked for
    overlay = events.Images(f"attention/sample_0/{layers[0]}/overlay")
    assert [e.step for e in overlay] == [2, 5]
    assert 300 <= overlay[0].width <= 520 and 300 <= overlay[0].height <= 520
    assert events.Images("attention/sample_1/rollout")[0].width == overlay[0].width
    distance = events.Scalars(f"attention_stats/distance/{layers[1]}/mean")
    # pixels between patch centres of a 4×4 grid of 8-px patches: between 0 and the diagonal
    assert all(0 < s.value < 8 * 3 * np.sqrt(2) for s in distance)
    sink = events.Scalars(f"attention_stats/sink/{layers[0]}/head_0")
    assert all(0 <= s.value <= 1 for s in sink)


class PatchAttention(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.qkv, self.heads = nn.Linear(dim, 3 * dim), heads

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = (t.view(B, L, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(D, dim=2))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class HandWrittenViT(pl.LightningModule):
    """A ViT written by hand: no grid attributes, so the grid is given to the callback."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 16, kernel_size=8, stride=8)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.attn = PatchAttention()
        self.head = nn.Linear(16, 2)

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose(1, 2)  # (B, 3·5, 16)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
        return self.head(self.attn(x)[:, 0])

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _gray_loader(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.rand(8, 1, 24, 40, generator=g), torch.randint(0, 2, (8,))),
        batch_size=4,
    )


def test_hand_written_vit_with_an_explicit_non_square_grid(tmp_path):
    grid = PatchGrid(grid=(3, 5), prefix_tokens=1, patch_size=(8, 8))
    monitor = AttentionMonitor(image_grid=grid, plots=["overlay", "rollout"])
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(HandWrittenViT(), _gray_loader(0), _gray_loader(1))
    events = read_events(trainer.logger.log_dir)
    assert set(events.Tags()["images"]) == {
        "attention/sample_0/attn/overlay",
        "attention/sample_1/attn/overlay",
        "attention/sample_0/rollout",
        "attention/sample_1/rollout",
    }
    image = events.Images("attention/sample_0/attn/overlay")[0]
    assert image.width > image.height  # the 24×40 image keeps its shape


def test_a_grid_that_does_not_match_warns_with_what_was_expected(tmp_path):
    grid = PatchGrid(grid=(4, 4), prefix_tokens=1, patch_size=(8, 8))  # the model has 3×5 patches
    trainer = make_trainer(tmp_path, [AttentionMonitor(image_grid=grid, plots=["overlay"])], max_epochs=1)
    with pytest.warns(
        RuntimeWarning, match=r"no captured layer matches the patch grid.*expected 1 prefix \+ 4×4"
    ):
        trainer.fit(HandWrittenViT(), _gray_loader(0), _gray_loader(1))
