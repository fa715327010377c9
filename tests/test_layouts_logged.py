"""Unusual attention through the whole monitor: what reaches the logs means what it says."""

import io

import numpy as np
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from lightning_models import image_loader, make_trainer, read_events
from PIL import Image
from torch import nn

from lightning_attnviz import AttentionMonitor, PatchGrid
from lightning_attnviz.sinks.capture_file import load_capture
from lightning_attnviz.sinks.tags import Tags


class LitPooled(pl.LightningModule):
    """A timm ViT read out by an attention pool (``global_pool="map"``), no CLS token."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2,
            num_heads=4, num_classes=3, global_pool="map", class_token=False,
        )  # fmt: skip

    def forward(self, x):
        return self.vit(x)

    def training_step(self, batch, _):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, _):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_an_attention_pool_is_drawn_over_the_image(tmp_path):
    monitor = AttentionMonitor(plots=["overlay", "rollout"], image_grid=PatchGrid((4, 4), 0, (8, 8)))
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(LitPooled(), image_loader(), image_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    tags = set(events.Tags()["images"])
    assert "attention/sample_0/vit.attn_pool/overlay" in tags  # the latent → patches row the head reads
    assert "attention/sample_0/vit.blocks.0.attn/overlay" in tags
    assert "attention/sample_0/rollout" in tags


class Seq2Seq(pl.LightningModule):
    """``nn.Transformer`` fed source and target token ids: decoder axes are target tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.model = nn.Transformer(16, 2, 1, 1, 32, batch_first=True, dropout=0.0)
        self.out = nn.Linear(16, 20)

    def forward(self, input_ids, decoder_input_ids):
        return self.out(self.model(self.embed(input_ids), self.embed(decoder_input_ids)))

    def training_step(self, batch, _):
        logits = self(batch["input_ids"], batch["decoder_input_ids"])
        return F.cross_entropy(logits.flatten(0, 1), batch["decoder_input_ids"].flatten())

    def validation_step(self, batch, _):
        self.log("val_loss", self.training_step(batch, _))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _pairs(seed):
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(10, 20, (8, 7), generator=g)
    target = torch.randint(0, 10, (8, 5), generator=g)
    rows = [{"input_ids": s, "decoder_input_ids": t} for s, t in zip(source, target, strict=True)]
    return torch.utils.data.DataLoader(rows, batch_size=4)


def test_decoder_axes_are_labelled_with_target_tokens(tmp_path):
    vocab = [f"w{i}" for i in range(20)]
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=vocab, plots=["heatmap"])], max_epochs=1)
    trainer.fit(Seq2Seq(), _pairs(0), _pairs(1))
    first = next(iter(_pairs(1)))
    source = [vocab[i] for i in first["input_ids"][0].tolist()]
    target = [vocab[i] for i in first["decoder_input_ids"][0].tolist()]
    saved = load_capture(next((tmp_path / "tb" / "version_0" / Tags().captures_dir).glob("*.npz")))
    views = {v.layer: v for v in saved.views if v.sample == 0}
    encoder = next(v for k, v in views.items() if "encoder" in k)
    decoder_self = next(v for k, v in views.items() if k.endswith("self_attn") and "decoder" in k)
    cross = next(v for k, v in views.items() if "multihead_attn" in k)
    assert encoder.q_labels == source and encoder.k_labels == source
    assert decoder_self.q_labels == target and decoder_self.k_labels == target
    assert cross.q_labels == target and cross.k_labels == source  # target queries read source keys
    heatmap = read_events(trainer.logger.log_dir).Images(f"attention/sample_0/{cross.layer}/heatmap")[0]
    assert np.asarray(Image.open(io.BytesIO(heatmap.encoded_image_string))).std() > 10


class LitClip(pl.LightningModule):
    """A small Hugging Face CLIP fed token ids and images together."""

    def __init__(self) -> None:
        super().__init__()
        import transformers as tf

        small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
        vision = dict(small, image_size=32, patch_size=8)
        text = dict(small, vocab_size=50)
        config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        self.clip = tf.CLIPModel(config)

    def forward(self, input_ids, pixel_values):
        return self.clip(input_ids=input_ids, pixel_values=pixel_values).logits_per_image

    def training_step(self, batch, _):
        logits = self(**batch)
        return F.cross_entropy(logits, torch.arange(len(logits)))

    def validation_step(self, batch, _):
        self.log("val_loss", self.training_step(batch, _))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_a_vision_tower_beside_a_text_model_is_labelled_by_patches(tmp_path):
    g = torch.Generator().manual_seed(0)
    ids, images = torch.randint(0, 49, (8, 6), generator=g), torch.randn(8, 3, 32, 32, generator=g)
    rows = [{"input_ids": i, "pixel_values": p} for i, p in zip(ids, images, strict=True)]
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    vocab = [f"w{i}" for i in range(50)]
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=vocab, plots=["heatmap"])], max_epochs=1)
    trainer.fit(LitClip(), loader, loader)
    saved = load_capture(next((tmp_path / "tb" / "version_0" / Tags().captures_dir).glob("*.npz")))
    text = next(v for v in saved.views if "text_model" in v.layer and v.sample == 0)
    vision = next(v for v in saved.views if "vision_model" in v.layer and v.sample == 0)
    assert text.q_labels == [vocab[i] for i in ids[0].tolist()]
    assert vision.q_labels == PatchGrid((4, 4), 1, (8, 8)).labels()  # CLS, then row,column
