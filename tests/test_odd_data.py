"""Odd data never crashes training nor leaves a silently empty log: each gets a clear warning."""

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from lightning_models import LitEncoder, LitGPT, make_trainer, read_events, token_loader
from torch.utils.data import DataLoader, TensorDataset

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.sinks.capture_file import load_capture


class NaNInputs(LitGPT):
    """The second sample's embeddings are NaN in validation: its maps are NaN."""

    def forward(self, idx):
        out = self.model(idx)
        return out

    def on_validation_start(self):
        self.model.wte.weight.data[5] = float("nan")  # token 5 embeds to NaN

    def on_validation_end(self):
        self.model.wte.weight.data[5] = 0.0


def test_nan_inputs_warn_and_still_log(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(6, 32, (4, 10), generator=g)
    x[1, 3] = 5  # NaN flows from here through the layers of sample 1
    val = DataLoader(TensorDataset(x, x), batch_size=4)
    trainer = make_trainer(tmp_path, [AttentionMonitor()], max_epochs=1, limit_train_batches=1)
    with pytest.warns(
        RuntimeWarning, match=r"attention weights of 'model.h.0.attn' are NaN or infinite at step 0"
    ):
        trainer.fit(NaNInputs(), token_loader(), val)
    events = read_events(trainer.logger.log_dir)
    for sample in (0, 1):
        assert events.Images(f"attention/sample_{sample}/model.h.1.attn/heatmap")
    for scalar in events.Tags()["scalars"]:
        if scalar.startswith("attention_stats/"):
            assert all(np.isfinite(s.value) for s in events.Scalars(scalar)), scalar


def test_fully_padded_rows_single_token_and_small_batches(tmp_path):
    # one token per sample, a batch of one: maps are 1×1; a fully padded second sequence in the encoder
    single = DataLoader(
        TensorDataset(torch.randint(1, 32, (1, 1)), torch.randint(1, 32, (1, 1))), batch_size=1
    )
    trainer = make_trainer(
        tmp_path / "single", [AttentionMonitor(samples=2)], max_epochs=1, limit_train_batches=1
    )
    with pytest.warns(
        RuntimeWarning, match=r"the first validation batch has only 1 row\(s\), fewer than samples=2"
    ):
        trainer.fit(LitGPT(), token_loader(length=1), single)
    events = read_events(trainer.logger.log_dir)
    assert events.Images("attention/sample_0/model.h.0.attn/heatmap")
    assert not any("sample_1" in t for t in events.Tags()["images"])

    padded = torch.randint(1, 32, (2, 8))
    padded[1, :] = 0  # the second sequence is padding only: every key of every row is masked
    val = DataLoader(TensorDataset(padded, padded), batch_size=2)
    trainer = make_trainer(tmp_path / "padded", [AttentionMonitor()], max_epochs=1, limit_train_batches=1)
    pl.seed_everything(0)
    trainer.fit(LitEncoder(), token_loader(pad=True), val)
    events = read_events(trainer.logger.log_dir)
    assert events.Images("attention/sample_1/encoder.layers.0.self_attn/heatmap")
    (saved,) = sorted((Path(trainer.logger.log_dir) / "attention_captures").glob("step_*.npz"))
    empty = [v for v in load_capture(saved).views if v.sample == 1]
    assert empty and all(not v.visible.any() and not v.weights.any() for v in empty)  # gray, zero
    full = [v for v in load_capture(saved).views if v.sample == 0]
    assert all(np.allclose(v.weights.sum(-1), 1, atol=1e-2) for v in full)
    assert all(
        np.isfinite(s.value)
        for s in events.Scalars("attention_stats/entropy/encoder.layers.0.self_attn/mean")
    )
