"""Models users bring: nanoGPT, timm ViT, Hugging Face BERT / GPT-2 / Llama (GQA) / ViT."""

import pytest
import torch
from conftest import assert_close, assert_no_taps
from models import GPT, GPTConfig, gpt_reference_weights, hf_pair, timm_reference_weights, timm_vit

from lightning_attnviz import capture_attention, find_attention


def _capture(model, *args, samples=2, **kwargs):
    """Capture, asserting the model's output is bit-identical to a run without capture."""
    with torch.no_grad():
        plain = model(*args, **kwargs)
        with capture_attention(model, samples=samples) as cap:
            out = model(*args, **kwargs)
    _assert_equal_outputs(out, plain)
    assert_no_taps(model)
    return cap


def _assert_equal_outputs(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("flash", [True, False], ids=["sdpa", "eager"])
def test_nanogpt(flash):
    model = GPT(GPTConfig(flash=flash)).eval()
    idx = torch.randint(0, 32, (4, 12))
    cap = _capture(model, idx)
    assert list(cap.maps) == ["h.0.attn", "h.1.attn"]
    for weights, expected in zip(cap.maps.values(), gpt_reference_weights(model, idx), strict=True):
        assert_close(weights, expected[:2])
    record = cap.records["h.0.attn"]
    assert record.path == ("sdpa" if flash else "eager_softmax")
    assert record.causal is (True if flash else None)
    if not flash:  # masked future positions are inferred from the exact zeros softmax leaves
        assert not record.visible[0, 0].triu(1).any()


@pytest.mark.parametrize("fused", [True, False])
def test_timm_vit(fused):
    model = timm_vit(fused, reg_tokens=2)
    images = torch.randn(3, 3, 32, 32)
    sites = find_attention(model)
    assert [s.name for s in sites] == ["blocks.0.attn", "blocks.1.attn"]
    assert all(s.fused is fused for s in sites)
    cap = _capture(model, images)
    expected = timm_reference_weights(model, images)
    assert [w.shape for w in cap.maps.values()] == [(2, 4, 19, 19)] * 2  # cls + 2 registers + 16 patches
    for weights, ref in zip(cap.maps.values(), expected, strict=True):
        assert_close(weights, ref[:2])
    assert all(block.attn.fused_attn is fused for block in model.blocks)  # no flag was flipped


def _hf_compare(kind, inputs, expected_keys, expected_shape, **overrides):
    sdpa_model, eager_model = hf_pair(kind, **overrides)
    with torch.no_grad():
        reference = eager_model(**inputs, output_attentions=True).attentions
    for model, path in ((sdpa_model, "sdpa"), (eager_model, "eager_softmax")):
        cap = _capture(model, **inputs)
        assert list(cap.maps) == expected_keys
        for weights, ref in zip(cap.maps.values(), reference, strict=True):
            assert weights.shape == expected_shape
            assert_close(weights, ref[:2])
        assert {r.path for r in cap.records.values()} == {path}
    return cap


def test_hf_bert_with_padding():
    ids = torch.randint(0, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    keys = [f"encoder.layer.{i}.attention.self" for i in range(2)]
    _hf_compare("bert", dict(input_ids=ids, attention_mask=mask), keys, (2, 4, 9, 9))


def test_hf_gpt2_causal():
    ids = torch.randint(0, 50, (3, 10))
    cap = _hf_compare("gpt2", dict(input_ids=ids), ["h.0.attn", "h.1.attn"], (2, 4, 10, 10))
    assert torch.all(cap.maps["h.0.attn"][0, 0].triu(1) == 0)


def test_hf_llama_grouped_query_attention():
    ids = torch.randint(0, 50, (3, 8))
    keys = ["layers.0.self_attn", "layers.1.self_attn"]
    _hf_compare("llama", dict(input_ids=ids), keys, (2, 4, 8, 8))


def test_hf_vit():
    pixels = torch.randn(3, 3, 32, 32)
    keys = [f"layers.{i}.attention" for i in range(2)]
    _hf_compare("vit", dict(pixel_values=pixels), keys, (2, 4, 17, 17))


def test_hf_t5_encoder_decoder_self_and_cross_attention():
    ids, decoder_ids = torch.randint(0, 50, (3, 7)), torch.randint(0, 50, (3, 5))
    inputs = dict(input_ids=ids, decoder_input_ids=decoder_ids)
    sdpa_model, eager_model = hf_pair("t5")
    with torch.no_grad():
        ref = eager_model(**inputs, output_attentions=True)
    for model in (sdpa_model, eager_model):
        cap = _capture(model, **inputs)
        for i in range(2):
            assert_close(cap.maps[f"encoder.block.{i}.layer.0.SelfAttention"], ref.encoder_attentions[i][:2])
            assert_close(cap.maps[f"decoder.block.{i}.layer.0.SelfAttention"], ref.decoder_attentions[i][:2])
            cross = cap.maps[f"decoder.block.{i}.layer.1.EncDecAttention"]
            assert cross.shape == (2, 4, 5, 7)
            assert_close(cross, ref.cross_attentions[i][:2])
