"""Across epochs: scalars, drift, evolution strips, diagnostics, resumable state and exported captures."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning_models import VOCAB, LitGPT, LitPrevious, make_trainer, read_events, token_loader
from matplotlib.image import imread
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from lightning_attnviz import AttentionMonitor, capture_attention
from lightning_attnviz.__main__ import animate, render_file
from lightning_attnviz.analysis.views import js_divergence, layer_stats
from lightning_attnviz.render.maps import render_views
from lightning_attnviz.sinks.capture_file import load_capture
from lightning_attnviz.sinks.tags import Tags

CAPTURE_DIR = Tags().captures_dir


class MaskedAttention(nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)


def _reference_stats(weights: np.ndarray, visible: np.ndarray, sink: int):
    """Plain loops over samples, heads and rows; rows without visible keys are skipped."""
    samples, heads, q_len, k_len = weights.shape
    out = {m: [] for m in ("entropy", "entropy_norm", "distance", "sink", "max_weight")}
    for h in range(heads):
        ent, norm, dist, snk = [], [], [], []
        for s in range(samples):
            for i in range(q_len):
                keys = [j for j in range(k_len) if visible[s, h, i, j]]
                if not keys:
                    continue
                p = [weights[s, h, i, j] for j in keys]
                e = -sum(x * math.log(x) for x in p if x > 0)
                ent.append(e)
                if len(keys) > 1:
                    norm.append(e / math.log(len(keys)))
                dist.append(sum(weights[s, h, i, j] * abs(i - j) for j in keys))
                snk.append(sum(weights[s, h, i, j] for j in range(sink)))
        out["entropy"].append(np.mean(ent))
        out["entropy_norm"].append(np.mean(norm))
        out["distance"].append(np.mean(dist))
        out["sink"].append(np.mean(snk))
        out["max_weight"].append(weights[:, h].max())
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("sink", [1, 3])
def test_scalars_match_a_numpy_reference_with_causal_and_padded_rows(sink):
    B, H, L, E = 3, 2, 7, 8
    q, k, v = torch.randn(B, H, L, E) * 2, torch.randn(B, H, L, E) * 2, torch.randn(B, H, L, E)
    lengths = torch.tensor([7, 5, 4])
    visible = torch.ones(L, L, dtype=torch.bool).tril()[None, None] & (
        torch.arange(L)[None, None, None, :] < lengths[:, None, None, None]
    )  # causal and padded keys: (B, 1, L, L)
    visible = visible.expand(B, H, L, L).clone()
    visible[1, :, 6] = False  # one fully masked row
    with capture_attention(MaskedAttention(), samples=B) as cap:
        cap.model(q, k, v, visible)
    record = cap.records[""]
    stats = layer_stats(record, sink_tokens=sink)
    expected = _reference_stats(record.weights.double().numpy(), visible.numpy(), sink)
    for metric, values in expected.items():
        np.testing.assert_allclose(getattr(stats, metric), values, rtol=1e-5, atol=1e-6, err_msg=metric)
    assert stats.entropy_norm.max() <= 1 + 1e-6


def test_distance_is_nan_for_cross_attention():
    q, k = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4)
    with capture_attention(MaskedAttention()) as cap:
        cap.model(q, k, k, None)
    assert np.isnan(layer_stats(cap.records[""]).distance).all()


def test_js_divergence_matches_a_reference():
    rng = np.random.default_rng(0)
    p, q = rng.random((2, 4, 6)), rng.random((2, 4, 6))
    p /= p.sum(-1, keepdims=True)
    q /= q.sum(-1, keepdims=True)
    q[1, 2] = 0  # a row with no weight in one capture is left out
    expected = []
    for h in range(2):
        rows = []
        for i in range(4):
            if q[h, i].sum() == 0:
                continue
            m = (p[h, i] + q[h, i]) / 2
            kl = lambda a, b: sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)  # noqa: E731
            rows.append(0.5 * kl(p[h, i], m) + 0.5 * kl(q[h, i], m))
        expected.append(np.mean(rows))
    np.testing.assert_allclose(js_divergence(p, q), expected, rtol=1e-10)
    np.testing.assert_allclose(js_divergence(p, p), 0, atol=1e-12)
    onehot_a, onehot_b = np.eye(3)[None], np.eye(3)[None][:, :, ::-1].copy()
    onehot_b[:, 1] = [1, 0, 0]
    assert js_divergence(onehot_a, onehot_b)[0] == pytest.approx(math.log(2))  # disjoint rows


def test_strips_grow_and_drift_is_logged_after_the_first_capture(tmp_path):
    monitor = AttentionMonitor(tokens=VOCAB, plots=["evolution"], strip_length=5, head_stats=True)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=7)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    strips = events.Images("attention/sample_0/model.h.0.attn/evolution")
    steps = [2, 5, 8, 11, 14, 17, 20]
    assert [e.step for e in strips] == steps
    widths, heights = [e.width for e in strips], [e.height for e in strips]
    # one fixed-width column per capture (+ Δ) over a minimum width, up to 5 a row (a card's width);
    # the sixth panel (5 captures, strip_length=5, and the Δ) wraps into a second row
    assert widths == sorted(widths)
    assert widths[1] < widths[2] < widths[3] == widths[4] == widths[5] == widths[6]
    assert widths[3] - widths[2] == widths[2] - widths[1] > 40
    assert heights[3] < heights[4] == heights[5] == heights[6]
    for metric in ("entropy", "entropy_norm", "distance", "sink", "max_weight"):
        for head in ("head_0", "head_3", "mean"):
            scalars = events.Scalars(f"attention_stats/{metric}/model.h.1.attn/{head}")
            assert [s.step for s in scalars] == steps
    drift = events.Scalars("attention_stats/drift/model.h.0.attn/mean")
    assert [s.step for s in drift] == steps[1:]
    assert all(0 <= s.value <= math.log(2) for s in drift)
    assert [h.step for h in events.Histograms("attention_hist/model.h.0.attn")] == steps


def test_custom_scalars_layout_groups_each_layers_heads(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"], head_stats=True)], max_epochs=1)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    from tensorboard.plugins.custom_scalar import layout_pb2

    events = read_events(trainer.logger.log_dir)
    (layout_event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(layout_event.tensor_proto.string_val[0])
    categories = {c.title: c for c in layout.category}
    charts = {c.title: c for c in categories["attention_stats entropy"].chart}
    assert list(charts["model.h.1.attn: heads"].multiline.tag) == [
        r"^attention_stats/entropy/model\.h\.1\.attn/head_\d+$"
    ]
    assert list(charts["all layers (mean over heads)"].multiline.tag) == [
        r"^attention_stats/entropy/.*/mean$"
    ]


class SharpAttention(nn.Module):
    """Every key visible, but a +60 score bias puts ~all the weight on the previous token (the first
    token on itself)."""

    def forward(self, x):
        q = x[:, None]
        bias = torch.diag(torch.full((x.shape[1] - 1,), 60.0), -1)
        bias[0, 0] = 60.0
        return F.scaled_dot_product_attention(q, q, q, attn_mask=bias)[:, 0]


def test_entropy_collapse_and_uniform_heads_warn_once(tmp_path):
    model = LitPrevious()
    model.attn = SharpAttention()
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=[])], max_epochs=3)
    with pytest.warns(RuntimeWarning, match=r"attention entropy collapsed in 'attn' at step 2") as record:
        trainer.fit(model, token_loader(), token_loader(seed=1))
    assert sum("entropy collapsed" in str(w.message) for w in record) == 1

    class Uniform(LitPrevious):
        def forward(self, idx):  # q = 0: every query attends uniformly
            x = self.embed(idx)
            q = torch.zeros(*idx.shape, 16)
            return self.head(self.attn_uniform(q, x))

        def attn_uniform(self, q, x):
            return self.attn2(q, x)

    class UniformAttention(nn.Module):
        def forward(self, q, x):
            return F.scaled_dot_product_attention(q[:, None], x[:, None], x[:, None])[:, 0]

    model = Uniform()
    model.attn2 = UniformAttention()
    trainer = make_trainer(tmp_path, [AttentionMonitor(modules=["attn2"], plots=[])], max_epochs=4)
    with pytest.warns(RuntimeWarning, match=r"head 0 of 'attn2' has stayed uniform for 3 captures") as record:
        trainer.fit(model, token_loader(), token_loader(seed=1))
    assert sum("stayed uniform" in str(w.message) for w in record) == 1


def _resumable_fit(tmp_path, max_epochs, ckpt_path=None, val_seed=1):
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    monitor = AttentionMonitor(tokens=VOCAB, plots=["heatmap", "evolution"], strip_length=8)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(
        tmp_path, [monitor, checkpoint], logger=logger, max_epochs=max_epochs, enable_checkpointing=True
    )
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=val_seed), ckpt_path=ckpt_path)
    return trainer, monitor


def test_resume_continues_the_same_samples_strips_and_steps(tmp_path):
    _, first = _resumable_fit(tmp_path, 2)
    # the resumed fit is given another validation loader: the samples must come from the checkpoint
    trainer, resumed = _resumable_fit(tmp_path, 4, ckpt_path=tmp_path / "ckpt" / "last.ckpt", val_seed=9)
    assert torch.equal(resumed._samples.rows[0], first._samples.rows[0])
    events = read_events(trainer.logger.log_dir)
    for tag in events.Tags()["images"]:
        steps = [e.step for e in events.Images(tag)]
        assert steps == [2, 5, 8, 11], tag  # continued, no duplicates
    strips = events.Images("attention/sample_0/model.h.0.attn/evolution")
    reference = make_trainer(
        tmp_path / "ref", [AttentionMonitor(tokens=VOCAB, plots=["evolution"])], max_epochs=4
    )
    reference.fit(LitGPT(), token_loader(), token_loader(seed=1))
    uninterrupted = read_events(reference.logger.log_dir).Images(
        "attention/sample_0/model.h.0.attn/evolution"
    )
    assert strips[-1].width == uninterrupted[-1].width  # 4 captures + Δ in the strip
    # the module table once per fit: the first fit's and the resumed fit's
    assert [e.step for e in events.Tensors("attention/modules/text_summary")] == [2, 8]
    assert [s.step for s in events.Scalars("attention_stats/drift/model.h.0.attn/mean")] == [5, 8, 11]


def test_saved_captures_rerender_pixel_equal_and_animate(tmp_path):
    plots = ["heatmap", "heads", "arrows", "atlas", "evolution"]
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=VOCAB, plots=plots)], max_epochs=3)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    captures = sorted((tmp_path / "tb" / "version_0" / CAPTURE_DIR).glob("step_*.npz"))
    assert [p.name for p in captures] == ["step_00000002.npz", "step_00000005.npz", "step_00000008.npz"]
    assert all(p.stat().st_size < 60_000 for p in captures)

    saved = load_capture(captures[-1])
    views, step, epoch = saved.views, saved.step, saved.epoch
    assert (step, epoch) == (8, 2)
    events = read_events(trainer.logger.log_dir)
    for picture in render_views(views, step, ["heatmap", "heads", "arrows", "atlas"]):
        tag = (
            f"attention/sample_{picture.sample}/atlas"
            if picture.layer is None
            else f"attention/sample_{picture.sample}/{picture.layer}/{picture.kind}"
        )
        logged = events.Images(tag)[-1]
        decoded = (imread(io.BytesIO(logged.encoded_image_string), format="png")[..., :3] * 255).round()
        assert np.array_equal(decoded.astype(np.uint8), picture.image), tag

    written, not_drawn = render_file(captures[0], tmp_path / "png", ["heatmap"])
    assert len(written) == 4 and all(p.stat().st_size > 1000 for p in written) and not not_drawn
    gif = tmp_path / "a.gif"
    assert animate(captures[0].parent, "model.h.1.attn", 1, gif, fps=2) == 3
    with Image.open(gif) as image:
        assert image.n_frames == 3
