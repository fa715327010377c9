"""Weights behind F.scaled_dot_product_attention, for every argument it takes."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_no_taps, reference_sdpa_weights
from torch import nn

from lightning_attnviz import capture_attention


class SDPAttention(nn.Module):
    """Calls SDPA on the q, k, v it is given, with fixed keyword arguments."""

    def __init__(self, **sdpa_kwargs):
        super().__init__()
        self.sdpa_kwargs = sdpa_kwargs

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **self.sdpa_kwargs)


B, H, L, S, E = 4, 3, 6, 9, 8


def _run(module, q, k, v, samples=2):
    with torch.no_grad():
        expected_out = module(q, k, v)
        with capture_attention(module, samples=samples) as cap:
            out = module(q, k, v)
    assert torch.equal(out, expected_out)  # the fused kernel ran untouched
    assert_no_taps(module)
    (record,) = cap.records.values()
    return record, out


CASES = {
    "self_attention": dict(square=True),
    "cross_attention": dict(),
    "causal_square": dict(is_causal=True, square=True),
    "causal_kv_cache": dict(is_causal=True),  # q_len < k_len, top-left aligned as SDPA documents
    "scale": dict(scale=0.37),
    "bool_mask_2d": dict(mask="bool2d"),
    "bool_mask_4d": dict(mask="bool4d"),
    "float_mask": dict(mask="float"),
    "float_mask_per_head": dict(mask="float_heads"),
}


def _mask(kind, length, width):
    if kind == "bool2d":
        return torch.rand(length, width) > 0.3
    if kind == "bool4d":
        mask = torch.rand(B, 1, length, width) > 0.4
        mask[..., 0] = True
        return mask
    if kind == "float":
        return torch.randn(B, 1, length, width)
    if kind == "float_heads":
        return torch.randn(1, H, length, width).masked_fill(torch.rand(1, H, length, width) > 0.7, -torch.inf)
    return None


@pytest.mark.parametrize("case", list(CASES))
def test_sdpa_arguments(case):
    opts = dict(CASES[case])
    square = opts.pop("square", False)
    length = S if square else L
    q, k, v = torch.randn(B, H, length, E), torch.randn(B, H, S, E), torch.randn(B, H, S, E)
    mask = _mask(opts.pop("mask", None), length, S)
    if mask is not None:
        opts["attn_mask"] = mask
    record, out = _run(SDPAttention(**opts), q, k, v)

    expected = reference_sdpa_weights(
        q[:2],
        k[:2],
        mask[:2] if mask is not None and mask.shape[0] == B else mask,
        opts.get("is_causal", False),
        opts.get("scale"),
    )
    expected = torch.nan_to_num(expected)  # rows with no visible key have zero weight
    assert_close(record.weights, expected)
    # the weights are the ones the kernel applied: A @ v reproduces its output
    visible_rows = record.weights.sum(-1) > 0
    assert_close((record.weights @ v[:2])[visible_rows], out[:2][visible_rows])
    assert record.path == "sdpa"
    assert record.causal == opts.get("is_causal", False)
    assert record.masked == ("attn_mask" in opts or opts.get("is_causal", False))
    assert record.scale == pytest.approx(opts.get("scale", E**-0.5))


@pytest.mark.parametrize("native", [True, False], ids=["enable_gqa", "repeat_kv"])
def test_grouped_query_attention(native):
    kv_heads = 2
    q = torch.randn(B, 6, L, E)
    k, v = torch.randn(B, kv_heads, L, E), torch.randn(B, kv_heads, L, E)
    if native:
        module = SDPAttention(enable_gqa=True, is_causal=True)
    else:  # what models do on older torch: repeat k/v heads themselves
        module = SDPAttention(is_causal=True)
        k, v = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    record, out = _run(module, q, k, v)
    assert_close(record.weights, reference_sdpa_weights(q[:2], k[:2], is_causal=True, enable_gqa=native))
    assert_close(record.weights @ v[:2].repeat_interleave(3 if native else 1, dim=1), out[:2])
    assert record.gqa_groups == (3 if native else 1)


def test_fully_masked_rows_are_zero_and_hidden():
    q, k, v = torch.randn(B, H, L, E), torch.randn(B, H, S, E), torch.randn(B, H, S, E)
    mask = torch.ones(L, S, dtype=torch.bool)
    mask[2] = False
    record, _ = _run(SDPAttention(attn_mask=mask), q, k, v)
    assert torch.all(record.weights[:, :, 2] == 0)
    assert not torch.isnan(record.weights).any()
    assert not record.visible[..., 2, :].any()
    assert_close(record.weights.sum(-1)[:, :, [0, 1, 3, 4, 5]], torch.ones(2, H, 5))


def test_three_dim_inputs_are_one_head():
    q, k, v = torch.randn(B, L, E), torch.randn(B, S, E), torch.randn(B, S, E)
    record, _ = _run(SDPAttention(), q, k, v, samples=3)
    assert_close(record.weights, reference_sdpa_weights(q[:3, None], k[:3, None]))


def test_only_the_sampled_rows_are_computed():
    q, k, v = torch.randn(B, H, L, E), torch.randn(B, H, S, E), torch.randn(B, H, S, E)
    record, _ = _run(SDPAttention(), q, k, v, samples=1)
    assert record.weights.shape == (1, H, L, S)
    record, _ = _run(SDPAttention(), q, k, v, samples=10)  # more than the batch: all of it
    assert record.weights.shape == (B, H, L, S)
