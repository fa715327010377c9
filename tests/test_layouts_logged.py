"""Unusual attention through the whole monitor: what reaches the logs means what it says."""

import io
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from lightning_models import LitImageClassifier, LitTimmViT, image_loader, make_trainer, read_events
from PIL import Image
from torch import nn

from lightning_attnviz import AttentionMonitor, PatchGrid
from lightning_attnviz.sinks.capture_file import load_capture
from lightning_attnviz.sinks.tags import Tags
from lightning_attnviz.tab.record import decode_map


def test_an_attention_pool_is_drawn_over_the_image(tmp_path):
    monitor = AttentionMonitor(plots=["overlay", "rollout"], image_grid=PatchGrid((4, 4), 0, (8, 8)))
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    model = LitTimmViT(lr=1e-3, adam=True, global_pool="map", class_token=False)  # read out by a pool
    trainer.fit(model, image_loader(), image_loader(seed=1))
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


# -- windows, bands and blocks through a real fit ---------------------------------------------------


class LitSwin(LitImageClassifier):
    """A small timm Swin (two stages: 14×14 tokens, then 7×7 after patch merging)."""

    def __init__(self, fused: bool) -> None:
        super().__init__(lr=1e-3, adam=True)
        self.net = timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=56, window_size=7,
            embed_dim=16, depths=(2, 2), num_heads=(2, 2),
        )  # fmt: skip
        for module in self.net.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = fused

    def forward(self, x):
        return self.net(x)


def _tab_blob(log_dir, tag):
    """The Attention tab's last record under ``tag``, read from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    return events.Tensors(tag)[-1].tensor_proto.string_val[0]


def _saved(tmp_path):
    return load_capture(next((tmp_path / "tb" / "version_0" / Tags().captures_dir).glob("*.npz")))


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_swin_windows_are_drawn_over_the_image_per_stage(tmp_path, fused):
    from layout_references import timm_swin_reference

    # the maps are stored whole (up to store_tokens=512), whatever the pictures are pooled to
    monitor = AttentionMonitor(plots=["overlay", "rollout", "heatmap"], samples=2)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    model, val = LitSwin(fused), image_loader(size=(56, 56), seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, image_loader(size=(56, 56)), val)
    ours = [str(w.message) for w in caught if "AttentionMonitor" in str(w.message)]
    assert [m for m in ours if "no attention rollout" in m and "2 grids (7×7, 14×14" in m]  # said once
    assert not [m for m in ours if "failed" in m or "not captured" in m]
    events = read_events(trainer.logger.log_dir)
    tags = set(events.Tags()["images"])
    layers = [f"net.layers.{s}.blocks.{b}.attn" for s in range(2) for b in range(2)]
    assert {f"attention/sample_0/{layer}/overlay" for layer in layers} <= tags
    assert not [t for t in tags if "rollout" in t]  # not defined across patch merging: said once
    # what was logged is the model's own weights, placed back by the test's own code
    images = next(iter(val))[0][:2]
    expected = timm_swin_reference(model.net.eval(), images)
    saved = {v.layer: v for v in _saved(tmp_path).views if v.sample == 0}
    for layer in layers:
        view, ref = saved[layer], expected[layer.removeprefix("net.")][0]
        assert view.weights.shape == ref.shape and not view.note  # exact, not pooled
        assert np.abs(view.weights - ref.numpy()).max() < 2e-3  # float16 in the file
    assert saved[layers[2]].q_labels[:3] == ["0,0", "0,1", "0,2"]  # the 7×7 stage's own grid
    overlay = events.Images(f"attention/sample_0/{layers[0]}/overlay")[-1]
    picture = np.asarray(Image.open(io.BytesIO(overlay.encoded_image_string)))
    assert picture.std() > 10
    table = events.Tensors("attention/modules/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "windowed attention placed back" in table and "not captured" not in table
    stage2 = decode_map(_tab_blob(trainer.logger.log_dir, f"sample_0/{layers[2]}"))
    assert stage2.grid == (7, 7) and stage2.image is not None  # the tab places the image by its stage


class LitText(pl.LightningModule):
    """A Hugging Face encoder (Longformer or BigBird block-sparse) fed dict batches."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        import transformers as tf

        small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        if kind == "longformer":
            window = dict(attention_window=4, max_position_embeddings=64)
            self.encoder = tf.LongformerModel(tf.LongformerConfig(vocab_size=50, **window, **small))
        else:
            sparse = dict(attention_type="block_sparse", block_size=2, num_random_blocks=1)
            config = tf.BigBirdConfig(vocab_size=50, max_position_embeddings=64, **sparse, **small)
            self.encoder = tf.BigBirdModel(config)
        self.head = nn.Linear(32, 2)

    def forward(self, **batch):
        batch = {k: v for k, v in batch.items() if k != "labels"}
        return self.head(self.encoder(**batch).last_hidden_state[:, 0])

    def training_step(self, batch, _):
        return F.cross_entropy(self(**batch), batch["labels"])

    def validation_step(self, batch, _):
        self.log("val_loss", self.training_step(batch, _))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _documents(kind, seed, length):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(8):
        row = {"input_ids": torch.randint(3, 50, (length,), generator=g), "labels": torch.tensor(1)}
        row["attention_mask"] = torch.ones(length, dtype=torch.long)
        if kind == "longformer":
            row["global_attention_mask"] = (torch.arange(length) == 0).long()  # a CLS-like global token
        rows.append(row)
    return torch.utils.data.DataLoader(rows, batch_size=4)


@pytest.mark.parametrize("kind", ["longformer", "bigbird"])
def test_long_document_encoders_are_drawn_whole(tmp_path, kind):
    length = 13 if kind == "longformer" else 23  # both padded by the model itself (to 16 and 24)
    vocab = [f"w{i}" for i in range(50)]
    monitor = AttentionMonitor(tokens=vocab, plots=["heatmap"], max_tokens=64)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(LitText(kind), _documents(kind, 0, length), _documents(kind, 1, length))
    first = next(iter(_documents(kind, 1, length)))
    words = [vocab[i] for i in first["input_ids"][0].tolist()]
    views = [v for v in _saved(tmp_path).views if v.sample == 0]
    assert len(views) == 2
    for view in views:
        assert view.weights.shape == (4, length, length) and view.q_labels == words == view.k_labels
        rows = view.weights.astype(np.float64).sum(-1)
        assert np.allclose(rows, 1.0, atol=5e-3)  # every weight the kernel applied, none missed
        assert view.visible is not None and not view.visible.all()  # keys outside the band / blocks
    events = read_events(trainer.logger.log_dir)
    heatmap = events.Images(f"attention/sample_0/{views[0].layer}/heatmap")[-1]
    assert np.asarray(Image.open(io.BytesIO(heatmap.encoded_image_string))).std() > 10
    table = events.Tensors("attention/modules/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "made dense" in table


class TupleSeq2Seq(Seq2Seq):
    """``nn.Transformer`` fed a tuple batch ``(source ids, target ids)``."""

    def training_step(self, batch, _):
        logits = self(batch[0], batch[1])
        return F.cross_entropy(logits.flatten(0, 1), batch[1].flatten())

    def validation_step(self, batch, _):
        self.log("val_loss", self.training_step(batch, _))


def _tuple_pairs(seed):
    pairs = _pairs(seed)
    rows = [(r["input_ids"], r["decoder_input_ids"]) for r in pairs.dataset]
    return torch.utils.data.DataLoader(rows, batch_size=4)


@pytest.mark.parametrize("target", [None, 1, lambda batch: batch[1]], ids=["unknown", "index", "callable"])
def test_a_tuple_batch_never_labels_the_decoder_with_the_source(tmp_path, target):
    vocab = [f"w{i}" for i in range(20)]
    monitor = AttentionMonitor(
        tokens=vocab, plots=["heatmap"], forward_fn=lambda m, b: m(b[0], b[1]), target=target
    )
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(TupleSeq2Seq(), _tuple_pairs(0), _tuple_pairs(1))
    first = next(iter(_tuple_pairs(1)))
    source = [vocab[i] for i in first[0][0].tolist()]
    decoder = [vocab[i] for i in first[1][0].tolist()] if target is not None else [str(i) for i in range(5)]
    views = {v.layer: v for v in _saved(tmp_path).views if v.sample == 0}
    encoder = next(v for k, v in views.items() if "encoder" in k)
    decoder_self = next(v for k, v in views.items() if k.endswith("self_attn") and "decoder" in k)
    cross = next(v for k, v in views.items() if "multihead_attn" in k)
    assert encoder.q_labels == source == encoder.k_labels
    assert decoder_self.q_labels == decoder == decoder_self.k_labels
    assert cross.q_labels == decoder and cross.k_labels == source


def test_target_is_checked_at_construction():
    with pytest.raises(TypeError, match=r"`target` must be None, an index .* got 1.5"):
        AttentionMonitor(target=1.5)
    with pytest.raises(ValueError, match=r"`target` must be an index >= 0 .* got -1"):
        AttentionMonitor(target=-1)


def test_a_target_that_picks_no_token_ids_warns_once_and_shows_positions(tmp_path):
    monitor = AttentionMonitor(plots=["heatmap"], forward_fn=lambda m, b: m(b[0], b[1]), target=5)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    with pytest.warns(RuntimeWarning, match=r"`target=5` must pick the decoder's token ids"):
        trainer.fit(TupleSeq2Seq(), _tuple_pairs(0), _tuple_pairs(1))
    cross = next(v for v in _saved(tmp_path).views if "multihead_attn" in v.layer)
    assert cross.q_labels == [str(i) for i in range(5)]
