"""Bounded capture: maps pooled while they are computed, statistics from every row."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from lightning_models import LitGPT, make_trainer, read_events
from models import GPT, GPTConfig
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_attnviz import AttentionMonitor, capture_attention
from lightning_attnviz.analysis.views import layer_stats


def _pool(weights: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Reference pooling with loops: mean over a block's query rows of the sum over its keys."""
    s, h = weights.shape[:2]
    out = np.zeros((s, h, len(groups), len(groups)))
    for i, rows in enumerate(groups):
        for j, keys in enumerate(groups):
            out[:, :, i, j] = weights[:, :, rows][:, :, :, keys].sum(-1).mean(-1)
    return out


# 50 tokens to at most 16 blocks: the first token (the sink) alone, the other 49 in 15 slots at most:
# blocks of ceil(49 / 15) = 4, 13 of them, their sizes evened out (10 of 4 tokens, 3 of 3).
SIZES = [4] * 10 + [3] * 3
GROUPS = [[0]] + [list(range(1 + sum(SIZES[:b]), 1 + sum(SIZES[: b + 1]))) for b in range(13)]


class Attention(nn.Module):
    def forward(self, q, k, v, mask=None, causal=False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


@pytest.mark.parametrize("case", ["causal", "padding", "eager"])
def test_pooled_capture_equals_pooling_the_exact_map(case):
    B, H, L, E = 2, 3, 50, 8
    q, k, v = torch.randn(B, H, L, E), torch.randn(B, H, L, E), torch.randn(B, H, L, E)
    mask = None
    if case == "padding":
        mask = (torch.arange(L)[None, :] < torch.tensor([50, 31])[:, None])[:, None, None, :]
    model = Attention()
    if case == "eager":

        class EagerAttention(nn.Module):
            def forward(self, q, k, v):
                return ((q @ k.transpose(-2, -1)) * E**-0.5).softmax(-1) @ v

        model = EagerAttention()
    args = (q, k, v) if case == "eager" else (q, k, v, mask, case == "causal")
    with capture_attention(model, samples=2) as exact:
        model(*args)
    with capture_attention(model, samples=2, max_tokens=16, stats=True) as pooled:
        model(*args)
    exact_map, pooled_map = exact.records[""], pooled.records[""]
    assert pooled_map.block == (4, 4) and pooled_map.length == (50, 50)
    assert pooled_map.weights.shape == (2, 3, 14, 14)
    assert_close(
        pooled_map.weights, torch.from_numpy(_pool(exact_map.weights.double().numpy(), GROUPS)).float()
    )
    assert_close(pooled_map.weights.sum(-1)[:, :, :7], torch.ones(2, 3, 7))  # rows still sum to 1
    # the sink token is never pooled: its row and column are the exact map's
    assert_close(pooled_map.weights[:, :, 0, 0], exact_map.weights[:, :, 0, 0])
    assert pooled_map.pooling[1].labels()[:3] == ["0", "1–4", "5–8"]
    # statistics accumulated while pooling equal those of the exact map
    for metric, value in vars(layer_stats(exact_map)).items():
        if metric != "layer":
            np.testing.assert_allclose(getattr(layer_stats(pooled_map), metric), value, rtol=1e-5, atol=1e-6)
    if case == "padding":  # pooled key blocks that are all padding are hidden (sample 1 has 31 keys)
        shown = [any(k < 31 for k in keys) for keys in GROUPS]
        assert pooled_map.visible[1, 0, 0].tolist() == shown and shown.count(True) == 9


def test_an_8192_token_sequence_captures_in_bounded_memory(tmp_path):
    """A single warning explains the pooling; memory stays far below the 2×2×8192² floats of full maps."""
    L = 8192
    model = GPT(GPTConfig(block_size=L, n_layer=2, n_head=2, n_embd=32)).eval()

    class LitLong(LitGPT):
        def __init__(self):
            super().__init__()
            self.model = model

    x = torch.randint(0, 32, (2, L))
    loader = DataLoader(TensorDataset(x, x), batch_size=2)
    monitor = AttentionMonitor(plots=["heatmap"], histograms=False, samples=2)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    short = torch.randint(0, 32, (2, 16))  # one cheap training step; the fixed samples are the long ones
    train = DataLoader(TensorDataset(short, short), batch_size=2)
    _reset_peak_rss()
    before = _peak_rss_mb()
    start = time.perf_counter()
    match = r"up to 8192 tokens long are block-pooled to at most store_tokens=512"
    with pytest.warns(RuntimeWarning, match=match) as record:
        trainer.fit(LitLong(), train, loader)  # a capture at the end of the fit's validation
    elapsed = time.perf_counter() - start
    grown_mb = _peak_rss_mb() - before
    assert sum("block-pooled" in str(w.message) for w in record) == 1
    full_maps_mb = 2 * 2 * 2 * L * L * 4 / 2**20  # two layers of exact maps: 2 GiB
    assert grown_mb < full_maps_mb / 4, grown_mb
    events = read_events(trainer.logger.log_dir)
    (event,) = events.Images("attention/sample_0/model.h.0.attn/heatmap")
    assert event.width < 1000
    entropy = events.Scalars("attention_stats/entropy/model.h.1.attn/mean")
    assert 0 < entropy[0].value < np.log(L)
    print(f"8192-token validation with capture: {elapsed:.1f} s, peak RSS grew {grown_mb:.0f} MB")


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) of this process."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
