"""Windowed attention put back on the image's tokens (Swin, Swin-v2, Twins), against references the
tests build themselves: the model's own eager weights, placed back with the model's own partition code.

Grids are chosen so that the cases differ where mistakes hide: a grid divisible by the window (no
padding), one that is not (the model pads: timm rolls then pads, Hugging Face pads then rolls), and
shifted blocks in both.
"""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_no_taps
from layout_references import hf_swin_reference, no_attributes_left, timm_swin_reference, twins_reference
from torch import nn

from lightning_attnviz import capture_attention, find_attention
from lightning_attnviz.capture.inputs import compute
from lightning_attnviz.capture.pooling import RowStats
from lightning_attnviz.capture.windows import WindowGeometry
from lightning_attnviz.pipeline.messages import Job, job_from_state, job_state


def _capture(model, *args, defer=False, max_tokens=None, **kwargs):
    """Capture with every warning recorded; the model's output must be bit-identical."""
    with torch.no_grad():
        plain = model(*args, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with capture_attention(model, samples=2, defer=defer, max_tokens=max_tokens) as cap:
                out = model(*args, **kwargs)
    plain = plain if isinstance(plain, torch.Tensor) else plain[0]
    assert torch.equal(out if isinstance(out, torch.Tensor) else out[0], plain)
    assert_no_taps(model)
    no_attributes_left(model)
    records = {p.key: compute(p, max_tokens) for p in cap.pending} if defer else cap.records
    ours = [str(w.message) for w in caught if str(w.message).startswith(("Attention in", "These modules"))]
    return cap, records, ours


def _timm(name, fused, **kwargs):
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs).eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused  # the model's own per-instance switch, set at build time
    return model


_STAGES = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 2))
TIMM = {
    "swin-56": ("swin_tiny_patch4_window7_224", dict(img_size=56, window_size=7, **_STAGES)),  # 14×14
    "swin-64": ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=7, **_STAGES)),  # padded
    "swinv2-64": ("swinv2_tiny_window8_256", dict(img_size=64, window_size=8, **_STAGES)),
    "swinv2-48": ("swinv2_tiny_window8_256", dict(img_size=48, window_size=5, **_STAGES)),  # 12×12: padded
}


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("case", list(TIMM))
def test_timm_swin_windows_are_placed_back_with_the_shift_undone(case, fused):
    name, kwargs = TIMM[case]
    model = _timm(name, fused, **kwargs)
    images = torch.randn(3, 3, kwargs["img_size"], kwargs["img_size"])
    _, records, ours = _capture(model, images)
    assert not ours
    expected = timm_swin_reference(model, images)
    assert list(records) == list(expected) and len(records) == 4
    for key, ref in expected.items():
        record = records[key]
        assert_close(record.weights, ref)
        assert record.layout == "windowed" and record.grid is not None
        assert record.weights.shape[-1] == record.grid[0] * record.grid[1]
    shifted = records["layers.0.blocks.1.attn"]  # the first stage's shifted block
    if case in ("swin-56", "swin-64"):  # the roll brings the far corner into the corner's window
        # the shift mask keeps them apart, except where timm builds that mask for the padded grid
        # (16 → 21) but rolls the unpadded one: wrapped tokens then meet, with real weight, and the map
        # shows what the model computed
        meets = case == "swin-64"
        assert bool(shifted.visible[0, 0, 0, -1]) is meets
        assert bool((shifted.weights[:, :, 0, -1] > 0).all()) is meets
    uses_sdpa = fused and "swinv2" not in case  # timm's Swin-v2 has no fused path
    assert {r.path for r in records.values()} == {"sdpa" if uses_sdpa else "eager_softmax"}
    if uses_sdpa:  # map × values reproduces the kernel, window by window
        assert all(r.health.relative_error < 1e-4 for r in records.values())
    assert all(m.fused_attn is fused for m in model.modules() if hasattr(m, "fused_attn"))


def _hf_swin(kind, image, window, impl):
    import transformers as tf

    swin = (tf.SwinConfig, tf.SwinModel)
    config_cls, model_cls = swin if kind == "swin" else (tf.Swinv2Config, tf.Swinv2Model)
    torch.manual_seed(0)
    config = config_cls(
        image_size=image, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=window,
        attn_implementation=impl,
    )  # fmt: skip
    return model_cls(config).eval()


HF = [("swin", 32, 4, "sdpa"), ("swin", 32, 4, "eager"), ("swin", 40, 3, "sdpa"), ("swinv2", 32, 4, "eager"),
      ("swinv2", 40, 3, "eager")]  # fmt: skip


@pytest.mark.parametrize("kind,image,window,impl", HF, ids=["-".join(map(str, c)) for c in HF])
def test_hf_swin_windows_are_placed_back_with_the_shift_undone(kind, image, window, impl):
    model, eager = _hf_swin(kind, image, window, impl), _hf_swin(kind, image, window, "eager")
    pixels = torch.randn(3, 3, image, image)
    expected = hf_swin_reference(eager, pixels)
    _, records, ours = _capture(model, pixel_values=pixels)
    assert not ours
    assert list(records) == list(expected) and len(records) == 4
    for key, ref in expected.items():
        assert_close(records[key].weights, ref)
    assert {r.path for r in records.values()} == {"sdpa" if impl == "sdpa" else "eager_softmax"}


TWINS = dict(
    embed_dims=(16, 32), depths=(1, 1), num_heads=(2, 2), sr_ratios=(2, 1), wss=(4, 4), mlp_ratios=(2, 2)
)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("size", [64, 72], ids=["divisible", "padded"])
def test_twins_locally_grouped_windows_are_placed_back(size, fused):
    model = _timm("twins_svt_small", fused, img_size=size, **TWINS)
    images = torch.randn(3, 3, size, size)
    expected = twins_reference(model, images)
    _, records, ours = _capture(model, images)
    assert not ours
    assert set(expected) == {"blocks.0.0.attn", "blocks.1.0.attn"}
    for key, ref in expected.items():
        assert_close(records[key].weights, ref)
        assert records[key].grid == (size // 4, size // 4) if key.startswith("blocks.0") else (size // 8,) * 2
    # where the model padded the grid, the weight it put on the padding is not a token's: rows < 1
    rows = records["blocks.0.0.attn"].weights.sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows)) if size == 64 else bool((rows < 0.999).any())


def test_deferred_pooled_and_checkpointed_windows_are_the_same_map():
    model = _timm("swin_tiny_patch4_window7_224", False, img_size=64, window_size=7, **_STAGES)
    images = torch.randn(3, 3, 64, 64)
    _, exact, _ = _capture(model, images)
    cap, deferred, _ = _capture(model, images, defer=True)
    for key in exact:
        assert torch.equal(deferred[key].weights, exact[key].weights)
    job = Job(3, 0, tuple(cap.pending), ((),), (), True)  # through a checkpoint and back
    restored = {p.key: compute(p) for p in job_from_state(job_state(job)).pending}
    assert all(torch.equal(restored[k].weights, exact[k].weights) for k in exact)
    _, pooled, _ = _capture(model, images, max_tokens=64)
    # the 16 × 16 stage pooled on its own grid by the rule: token (0, 0) (the sink) alone, the rest in
    # 3 × 3 squares (2 × 2 would leave 1 + 64 blocks, over 64), blocks in the order of their first token
    first = pooled["layers.0.blocks.1.attn"]
    square = [(r // 3, c // 3) for r in range(16) for c in range(16)]
    order = list(dict.fromkeys(["sink", *square[1:]]))
    groups = [[0]] + [[t for t in range(1, 256) if square[t] == key] for key in order[1:]]
    assert first.block == (9, 9) and first.weights.shape == (2, 2, 37, 37) and len(groups) == 37
    w = exact["layers.0.blocks.1.attn"].weights.double()
    rows = [torch.stack([w[..., q, :][..., k].sum(-1).mean(-1) for k in groups], -1) for q in groups]
    ref = torch.stack(rows, -2)  # (s, H, 37, 37): each block's query rows averaged, its keys summed
    assert_close(first.weights, ref.float())
    v = exact["layers.0.blocks.1.attn"].visible.expand_as(w)
    seen = torch.stack(  # (s, H, 37, 37): a block is visible where any of its entries is
        [torch.stack([v[..., q, :][..., k].any(-1).any(-1) for k in groups], -1) for q in groups], -2
    )
    assert torch.equal(first.visible.expand_as(seen), seen)
    # the row statistics, read from the windows' compact rows, are those of the whole map
    pending = next(p for p in cap.pending if p.key == "layers.0.blocks.1.attn")
    windowed = compute(pending, max_tokens=64, stats=True, sink_keys=3).stats.per_head()
    whole = RowStats.empty(2, 2, True, sink_keys=3)
    whole.update(0, exact["layers.0.blocks.1.attn"].weights, exact["layers.0.blocks.1.attn"].visible)
    for metric, values in whole.per_head().items():
        assert np.allclose(windowed[metric], values, rtol=1e-5, atol=1e-6), metric


def test_window_geometry_undoes_the_roll_in_either_order():
    # a 5 × 5 grid, 3 × 3 windows, shift 1: 9 tokens of padding, rolled with the grid or not
    timm_order = WindowGeometry(5, 5, (3, 3), (1, 1), pad_first=False).slot_tokens()
    hf_order = WindowGeometry(5, 5, (3, 3), (1, 1), pad_first=True).slot_tokens()
    assert timm_order[0].tolist() == [6, 7, 8, 11, 12, 13, 16, 17, 18]  # window 0 starts at token (1, 1)
    assert hf_order[0].tolist() == [6, 7, 8, 11, 12, 13, 16, 17, 18]
    # bottom-right window, rows/cols (4, 0, pad) in timm's order: the wrapped row, then the padding
    assert timm_order[3].tolist() == [24, 20, -1, 4, 0, -1, -1, -1, -1]
    # Hugging Face's: rows/cols (4, pad, 0): the padding rolled in between
    assert hf_order[3].tolist() == [24, -1, 20, -1, -1, -1, 4, -1, 0]
    for tokens in (timm_order, hf_order):
        assert sorted(t for t in tokens.flatten().tolist() if t >= 0) == list(range(25))


def test_sites_say_how_their_windows_are_read():
    import timm

    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, **_STAGES)
    readers = {s.layout.reader for s in find_attention(swin)}
    assert readers == {"timm_swin"}
    small = dict(embed_dims=(16, 32, 32, 32), num_heads=(1, 1, 1, 1), depths=(1, 1, 1, 1))
    davit = timm.create_model("davit_tiny", pretrained=False, **small)
    windowed = [s for s in find_attention(davit) if s.layout.kind == "windowed"]
    assert windowed and not any(s.layout.supported for s in windowed)  # a family capture cannot read


class ToyWindowAttention(nn.Module):
    """Attention over a (B·windows, N, C) batch, as Swin's."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.num_heads = 1

    def forward(self, x, mask=None):
        q, k, v = self.qkv(x)[:, None].chunk(3, dim=-1)  # (B·windows, 1, N, 8)
        return F.scaled_dot_product_attention(q, k, v)[:, 0]


class PadThenRollBlock(nn.Module):
    """A block shaped like timm's Swin block (``_attn``, ``window_size``, ``shift_size``) that pads
    *before* it rolls, as Hugging Face does: the windows are not where timm's order puts them."""

    window_size, shift_size = (3, 3), (1, 1)

    def __init__(self) -> None:
        super().__init__()
        self.attn = ToyWindowAttention()

    def _attn(self, x):  # (B, 5, 5, C) -> 6 × 6, 4 windows of 3 × 3
        batch, channels = x.shape[0], x.shape[-1]
        grid = torch.roll(F.pad(x, (0, 0, 0, 1, 0, 1)), (-1, -1), (1, 2))
        windows = grid.view(batch, 2, 3, 2, 3, channels).permute(0, 1, 3, 2, 4, 5).reshape(-1, 9, channels)
        out = self.attn(windows).view(batch, 2, 2, 3, 3, channels).permute(0, 1, 3, 2, 4, 5)
        return torch.roll(out.reshape(batch, 6, 6, channels), (1, 1), (1, 2))[:, :5, :5]

    def forward(self, x):
        return x + self._attn(x)


def test_windows_that_are_not_where_the_family_puts_them_are_declared_not_drawn():
    model = nn.Sequential(PadThenRollBlock()).eval()
    assert find_attention(model)[0].layout.reader == "timm_swin"  # by its structure
    cap, records, ours = _capture(model, torch.randn(2, 5, 5, 8))
    assert not records and list(cap.skipped) == ["0.attn"]
    assert len(ours) == 1 and "'0.attn'" in ours[0] and "padding slots" in ours[0]


def test_hierarchical_models_give_their_first_stage_grid_and_each_stage_its_own():
    from lightning_attnviz.capture.grid import PatchGrid, find_grid

    swin = _timm("swin_tiny_patch4_window7_224", False, img_size=64, window_size=7, **_STAGES)
    assert find_grid(swin) == PatchGrid((16, 16), 0, (4, 4))
    assert find_grid(_hf_swin("swinv2", 40, 3, "eager")) == PatchGrid((10, 10), 0, (4, 4))
    twins = _timm("twins_svt_small", False, img_size=72, **TWINS)
    assert find_grid(twins) == PatchGrid((18, 18), 0, (4, 4))
    # a later stage covers the same image with larger tokens (an odd grid is padded before merging)
    assert find_grid(twins).stage((9, 9)) == PatchGrid((9, 9), 0, (8, 8))
    assert PatchGrid((7, 7), 0, (4, 4)).stage((4, 4)) == PatchGrid((4, 4), 0, (7, 7))
