"""Stored maps are the maps that ran: whole for the sizes people train (a 65- and a 197-token ViT), and
beyond the limit pooled by one rule everywhere (pictures, capture files, the tab): prefix and sink tokens
alone, image patches in squares labelled by patch ranges, text in contiguous blocks."""

import copy

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from lightning_models import LitTimmViT, make_trainer, read_events
from models import timm_reference_weights

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.analysis.views import AttentionView, pool_view
from lightning_attnviz.capture.blocks import plan_axis
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.sinks.capture_file import load_capture
from lightning_attnviz.tab.record import AxisBlocks, decode_map

# -- the rule, against loops written out here -------------------------------------------------------


def _reference(weights: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Mean over each block's query rows of the sum over each block's keys."""
    out = np.zeros((*weights.shape[:-2], len(groups), len(groups)))
    for i, rows in enumerate(groups):
        for j, keys in enumerate(groups):
            out[..., i, j] = weights[..., rows, :][..., :, keys].sum(-1).mean(-1)
    return out


def _squares(rows: int, cols: int, prefix: int, side: int) -> tuple[list[list[int]], list[str]]:
    """Prefix tokens alone, then side×side squares of patches from the top-left, row-major."""
    groups = [[t] for t in range(prefix)]
    labels = ["CLS", *[f"pre{i}" for i in range(1, prefix)]][:prefix]
    for r0 in range(0, rows, side):
        for c0 in range(0, cols, side):
            r1, c1 = min(r0 + side, rows) - 1, min(c0 + side, cols) - 1
            groups.append([prefix + r * cols + c for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)])
            span = lambda a, b: f"{a}" if a == b else f"{a}-{b}"  # noqa: E731
            labels.append(f"r{span(r0, r1)},c{span(c0, c1)}")
    return groups, labels


def _softmax_rows(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=shape) * 3
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("grid", "limit", "side"),
    [
        (PatchGrid((14, 14), 1, 16), 64, 2),  # ViT-B/16 at 224 px, to a 64-cell picture
        (PatchGrid((7, 7), 5, 8), 21, 2),  # odd grid, CLS + 4 registers: edge squares are smaller
        (PatchGrid((12, 9), 0, 4), 12, 3),  # no prefix token; 2×2 squares are not enough
    ],
)
def test_image_maps_pool_in_squares_and_keep_prefix_tokens_alone(grid, limit, side):
    weights = _softmax_rows((3, grid.length, grid.length))
    groups, labels = _squares(grid.rows, grid.cols, grid.prefix_tokens, side)
    view = AttentionView("attn", 0, weights, None, grid.labels(), grid.labels())
    pooled = pool_view(view, limit, grid, keep=grid.prefix_tokens)
    np.testing.assert_allclose(pooled.weights, _reference(weights.astype(np.float64), groups), atol=2e-3)
    assert pooled.q_labels == pooled.k_labels == labels
    assert len(labels) <= limit
    # prefix tokens are never pooled: their rows and columns among themselves are the exact values
    p = grid.prefix_tokens
    np.testing.assert_allclose(pooled.weights[:, :p, :p], weights[:, :p, :p], rtol=1e-3, atol=1e-6)
    assert pooled.note.count("pooled") == 1 and f"{side}×{side} squares" in pooled.note
    np.testing.assert_allclose(pooled.weights.sum(-1), 1.0, atol=2e-3)  # rows still sum to 1


def test_text_keeps_the_sink_tokens_alone_and_blocks_even():
    plan = plan_axis(512, 128, keep=4)
    sizes = np.bincount(plan.group)
    assert plan.blocks <= 128 and list(sizes[:4]) == [1, 1, 1, 1]
    assert sizes[4:].max() - sizes[4:].min() <= 1  # no lone last token drawn as an artefact
    assert np.all(np.diff(plan.group) >= 0)  # contiguous blocks, in order
    labels = plan.labels([f"t{i}" for i in range(512)])
    assert labels[:4] == ["t0", "t1", "t2", "t3"] and labels[4] == "4–8" and labels[-1].endswith("–511")


# -- real fits: the maps stored and shown ------------------------------------------------------------


def _images(side: int, seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(8, 3, side, side, generator=g), torch.randint(0, 3, (8,), generator=g)
    data = torch.utils.data.TensorDataset(images, labels)
    return torch.utils.data.DataLoader(data, batch_size=4)


def _fit(tmp_path, side: int, registers: int = 0, **kwargs):
    pl.seed_everything(3, verbose=False)
    model = LitTimmViT(img_size=side, reg_tokens=registers)  # (side / 8)² patches, CLS, registers
    monitor = AttentionMonitor(plots=["heatmap", "overlay"], histograms=False, **kwargs)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(model, _images(side, 0), _images(side, 1))  # one capture, at the end of the fit
    (path,) = (tmp_path / "tb" / "version_0" / "attention_captures").glob("*.npz")
    exact = timm_reference_weights(copy.deepcopy(model.vit), next(iter(_images(side, 1)))[0][:2])
    return trainer, load_capture(path), exact


def _tab(trainer, layer: str, sample: int = 0):
    events = read_events(trainer.logger.log_dir)
    return decode_map(events.Tensors(f"sample_{sample}/{layer}")[-1].tensor_proto.string_val[0])


@pytest.mark.parametrize("side", [64, 112], ids=["65_tokens", "197_tokens"])
def test_vit_maps_are_stored_whole_in_the_file_and_the_tab(tmp_path, side):
    trainer, saved, exact = _fit(tmp_path, side)
    length = (side // 8) ** 2 + 1
    for layer, reference in zip(["vit.blocks.0.attn", "vit.blocks.1.attn"], exact, strict=True):
        for sample in range(2):
            (view,) = [v for v in saved.views if v.layer == layer and v.sample == sample]
            assert view.weights.shape == (4, length, length) and view.pooling is None and not view.note
            assert view.k_labels[:3] == ["CLS", "0,0", "0,1"]
            np.testing.assert_allclose(view.weights, reference[sample].numpy(), atol=1e-3, rtol=2e-3)
        record = _tab(trainer, layer)
        assert (record.q, record.k) == (length, length) and not record.note
        assert record.grid == (side // 8, side // 8) and record.prefix_tokens == 1
        # what the tab pools by when the map is wider than its panel: CLS alone, the patch grid
        assert record.blocks == (AxisBlocks(1, (side // 8, side // 8, 1)),) * 2
        cls = reference[0][:, 0, 0].numpy()  # CLS → CLS, exact, per head
        step = (2 * record.k**2) ** (1 / 253) - 1  # one step of the tab's log-spaced bytes (tab.record)
        np.testing.assert_allclose(record.weights[:, 0, 0], cls, rtol=step, atol=1e-6)
    events = read_events(trainer.logger.log_dir)
    heatmap = events.Images("attention/sample_0/vit.blocks.0.attn/heatmap")[-1]
    assert heatmap.width < 1000  # a 197-token picture is pooled (2×2 squares); a 65-token one is not


def test_prefix_tokens_stay_alone_in_maps_pooled_while_capturing(tmp_path):
    """CLS and 4 registers before 8×8 patches (69 tokens), stored to at most 30 per side."""
    trainer, saved, exact = _fit(tmp_path, 64, registers=4, store_tokens=30, dashboard_tokens=30)
    (view,) = [v for v in saved.views if v.layer == "vit.blocks.1.attn" and v.sample == 0]
    groups, labels = _squares(8, 8, 5, 2)
    assert view.weights.shape == (4, 21, 21) and view.k_labels == labels
    expected = _reference(exact[1][0].double().numpy(), groups)
    np.testing.assert_allclose(view.weights, expected, atol=2e-3, rtol=2e-3)
    assert "prefix tokens kept alone" in view.note and "2×2 squares" in view.note
    record = _tab(trainer, "vit.blocks.1.attn")
    assert list(record.k_labels) == labels and record.note == view.note
    assert record.grid == (4, 4) and record.prefix_tokens == 5  # the pooled grid: whole squares
    # pooled further on screen: the prefix cells alone, the squares a 4×4 grid of 2×2 patches each
    assert record.blocks == (AxisBlocks(5, (4, 4, 5), (1,) * 5 + (4,) * 16, 2),) * 2
    np.testing.assert_allclose(record.weights[:, :5, :5], exact[1][0][:, :5, :5], atol=record.scales[0] / 127)
