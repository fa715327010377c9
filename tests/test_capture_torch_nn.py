"""nn.MultiheadAttention and PyTorch's Transformer layers, fast path included."""

import pytest
import torch
from conftest import assert_close, assert_no_taps
from torch import nn

from lightning_attnviz import capture_attention

B, L, S, D, H = 3, 5, 7, 16, 4


def _mha_reference(mha, query, key, value, **kwargs):
    """PyTorch's own per-head weights."""
    with torch.no_grad():
        return mha(query, key, value, need_weights=True, average_attn_weights=False, **kwargs)[1]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "attn_bool", "attn_float", "both", "attn_3d"])
def test_multihead_attention(batch_first, masks):
    mha = nn.MultiheadAttention(D, H, batch_first=batch_first)
    shape = (lambda n: (B, n, D)) if batch_first else (lambda n: (n, B, D))
    query, key = torch.randn(shape(L)), torch.randn(shape(S))
    kwargs = {}
    if masks in ("padding", "both"):
        kwargs["key_padding_mask"] = torch.arange(S)[None, :] >= torch.tensor([S, S - 2, 3])[:, None]
    if masks in ("attn_bool", "both"):
        kwargs["attn_mask"] = torch.rand(L, S) > 0.7  # True = masked, as MHA documents
        kwargs["attn_mask"][:, 0] = False
    if masks == "attn_float":
        kwargs["attn_mask"] = torch.randn(L, S)
    if masks == "attn_3d":
        kwargs["attn_mask"] = torch.randn(B * H, L, S)
    expected = _mha_reference(mha, query, key, key, **kwargs)
    with torch.no_grad():
        plain = mha(query, key, key, **kwargs)[0]
        with capture_attention(mha, samples=2) as cap:
            out = mha(query, key, key, **kwargs)[0]
    assert torch.equal(out, plain)
    assert_close(cap.maps[""], expected[:2])
    assert cap.records[""].path == "mha"
    assert cap.records[""].masked == (masks != "none")
    assert_no_taps(mha)


@pytest.mark.parametrize("option", ["kdim_vdim", "bias_k", "add_zero_attn", "no_bias", "unbatched"])
def test_multihead_attention_options(option):
    kwargs = {
        "kdim_vdim": dict(kdim=6, vdim=10),
        "bias_k": dict(add_bias_kv=True),
        "add_zero_attn": dict(add_zero_attn=True),
        "no_bias": dict(bias=False),
    }.get(option, {})
    mha = nn.MultiheadAttention(D, H, batch_first=True, **kwargs)
    query = torch.randn(B, L, D)
    key = torch.randn(B, S, kwargs.get("kdim", D))
    value = torch.randn(B, S, kwargs.get("vdim", D))
    if option == "unbatched":
        query, key, value = query[0], key[0], value[0]
    expected = _mha_reference(mha, query, key, value)
    with capture_attention(mha, samples=2) as cap:
        mha(query, key, value)
    if option == "unbatched":
        expected = expected[None]
    assert_close(cap.maps[""], expected[:2])


def _encoder(norm_first=False, layers=2):
    layer = nn.TransformerEncoderLayer(D, H, 32, dropout=0.1, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=not norm_first).eval()


def _layer_inputs(encoder, x, padding):
    """What each layer's self-attention sees, computed on the slow path."""
    inputs, out = [], x
    with (
        torch.no_grad(),
        torch.backends.mha.flags(enable_fastpath=False)
        if hasattr(torch.backends.mha, "flags")
        else torch.no_grad(),
    ):
        for layer in encoder.layers:
            inputs.append(layer.norm1(out) if layer.norm_first else out)
            out = layer(out, src_key_padding_mask=padding)
    return inputs


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_transformer_encoder_fast_path(grad_mode, norm_first, padding):
    """Eval + no_grad/inference_mode: PyTorch's fused path runs and self_attn.forward never does."""
    encoder = _encoder(norm_first)
    x = torch.randn(B, L, D)
    mask = torch.arange(L)[None, :] >= torch.tensor([L, L - 2, 3])[:, None] if padding else None
    context = torch.no_grad if grad_mode == "no_grad" else torch.inference_mode
    with context():
        plain = encoder(x, src_key_padding_mask=mask)
        with capture_attention(encoder, samples=B) as cap:
            out = encoder(x, src_key_padding_mask=mask)
    assert torch.equal(out, plain)  # fast path (and nested tensors) still taken: bit-identical
    assert list(cap.maps) == ["layers.0.self_attn", "layers.1.self_attn"]
    assert not any(w.is_inference() for w in cap.maps.values())
    assert_no_taps(encoder)

    for inp, (name, weights) in zip(_layer_inputs(encoder, x, mask), cap.maps.items(), strict=True):
        layer = encoder.get_submodule(name.rpartition(".")[0])
        expected = _mha_reference(layer.self_attn, inp, inp, inp, key_padding_mask=mask)
        if mask is not None:  # padded query rows do not exist on the nested path: zero, hidden
            expected = expected.masked_fill(mask[:, None, :, None], 0.0)
            assert not cap.records[name].visible[1, :, L - 1].any()
        assert_close(weights, expected)


def test_encoder_layer_alone_with_causal_mask():
    layer = nn.TransformerEncoderLayer(D, H, 32, batch_first=True).eval()
    x = torch.randn(B, L, D)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    with torch.no_grad():
        plain = layer(x, src_mask=causal, is_causal=True)
        with capture_attention(layer, samples=2) as cap:
            out = layer(x, src_mask=causal, is_causal=True)
    assert torch.equal(out, plain)
    expected = _mha_reference(layer.self_attn, x, x, x, attn_mask=causal)
    assert_close(cap.maps["self_attn"], expected[:2])
    assert torch.all(cap.maps["self_attn"][0, 0].triu(1) == 0)


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_decoder_layer_and_full_transformer(grad_mode):
    model = nn.Transformer(
        D, H, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, batch_first=True
    ).eval()
    src, tgt = torch.randn(B, S, D), torch.randn(B, L, D)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    context = torch.no_grad if grad_mode == "no_grad" else torch.inference_mode
    with context():
        plain = model(src, tgt, tgt_mask=causal)
        with capture_attention(model, samples=2) as cap:
            out = model(src, tgt, tgt_mask=causal)
        memory = model.encoder(src)
    assert torch.equal(out, plain)
    assert list(cap.maps) == [
        "encoder.layers.0.self_attn",
        "encoder.layers.1.self_attn",
        "decoder.layers.0.self_attn",
        "decoder.layers.0.multihead_attn",
        "decoder.layers.1.self_attn",
        "decoder.layers.1.multihead_attn",
    ]
    layer = model.decoder.layers[0]
    with context():
        x = layer.norm1(tgt + layer._sa_block(tgt, causal, None))
    assert_close(
        cap.maps["decoder.layers.0.multihead_attn"],
        _mha_reference(layer.multihead_attn, x, memory, memory)[:2],
    )
    assert_close(
        cap.maps["decoder.layers.0.self_attn"],
        _mha_reference(layer.self_attn, tgt, tgt, tgt, attn_mask=causal)[:2],
    )
    assert cap.maps["decoder.layers.0.multihead_attn"].shape == (2, H, L, S)


def test_shared_module_called_twice_gets_distinct_keys():
    mha = nn.MultiheadAttention(D, H, batch_first=True)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x, memory):
            x = self.attn(x, x, x)[0]
            return self.attn(x, memory, memory)[0]

    model = Twice()
    x, memory = torch.randn(B, L, D), torch.randn(B, S, D)
    with capture_attention(model) as cap:
        model(x, memory)
    assert list(cap.maps) == ["attn", "attn#1"]
    assert cap.maps["attn"].shape == (2, H, L, L)
    assert cap.maps["attn#1"].shape == (2, H, L, S)
    assert [r.call for r in cap.records.values()] == [0, 1]


def _shipped_bytes(inputs) -> int:
    from dataclasses import fields

    return sum(
        getattr(inputs, f.name).nbytes for f in fields(inputs) if torch.is_tensor(getattr(inputs, f.name))
    )


def test_mha_ships_the_projected_sampled_rows_not_the_projection_weights():
    """E = 768: W_q, W_k, W_v, W_o are 9.4 MB; two sampled rows of 16 tokens are 0.1 MB each."""
    embed, heads, length = 768, 12, 16
    mha = nn.MultiheadAttention(embed, heads, batch_first=True).eval()
    x = torch.randn(4, length, embed)
    with torch.no_grad(), capture_attention(mha, samples=2, defer=True) as cap:
        mha(x, x, x, need_weights=False)
    (pending,) = cap.pending
    inputs = pending.inputs
    w_q, w_k, w_v = mha.in_proj_weight.detach().chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.detach().chunk(3)
    assert_close(inputs.q, x[:2] @ w_q.T + b_q)
    assert_close(inputs.k, x[:2] @ w_k.T + b_k)
    assert_close(inputs.v, x[:2] @ w_v.T + b_v)
    weight_bytes = embed * embed * 4
    # q, k, v and the output rows, and the output projection the fidelity check needs (W_o and its
    # bias): never W_q, W_k or W_v, which alone would be 3 × weight_bytes
    rows = 2 * length * embed * 4
    assert _shipped_bytes(inputs) == weight_bytes + embed * 4 + 4 * rows
    assert all(t.shape[-2:] != (embed, embed) for t in (inputs.q, inputs.k, inputs.v))
    expected = _mha_reference(mha, x, x, x)[:2]
    from lightning_attnviz.capture.inputs import compute

    record = compute(pending)
    assert_close(record.weights, expected)
    assert record.health.error < 1e-4  # the module's own output, reproduced


def test_encoder_layer_ships_rows_and_only_the_gram_of_out_proj():
    embed, heads = 256, 8
    layer = nn.TransformerEncoderLayer(embed, heads, 512, batch_first=True, dropout=0.0).eval()
    x = torch.randn(3, 10, embed)
    with torch.no_grad(), capture_attention(layer, samples=2, defer=True) as cap:
        layer(x)
    (pending,) = cap.pending
    inputs = pending.inputs
    assert inputs.out_weight is None and inputs.out_gram.shape == (heads, embed // heads, embed // heads)
    assert _shipped_bytes(inputs) < embed * embed * 4  # less than one projection matrix
    from lightning_attnviz.capture.inputs import compute
    from lightning_attnviz.capture.probe import head_norms

    record = compute(pending)
    v = inputs.v.view(2, 10, heads, embed // heads).transpose(1, 2)
    expected = head_norms(v, layer.self_attn.out_proj.weight.detach())  # through W_O itself
    assert_close(record.health.value_norms, expected)
