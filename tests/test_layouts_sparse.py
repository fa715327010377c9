"""Banded (Longformer) and block-sparse (BigBird) attention made dense, against references the tests
build themselves: Longformer's band and global rows from Hugging Face's own ``output_attentions``;
BigBird's map checked by what it reproduces, the layer's own output.
"""

import warnings

import pytest
import torch
from conftest import assert_close, assert_no_taps
from layout_references import bigbird_calls, longformer_reference, no_attributes_left

from lightning_attnviz import capture_attention, find_attention
from lightning_attnviz.capture.inputs import compute

_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _capture(model, defer=False, max_tokens=None, **inputs):
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with capture_attention(model, samples=2, defer=defer, max_tokens=max_tokens) as cap:
                out = model(**inputs).last_hidden_state
    assert torch.equal(out, plain)
    assert_no_taps(model)
    no_attributes_left(model)
    records = {p.key: compute(p, max_tokens) for p in cap.pending} if defer else cap.records
    ours = [str(w.message) for w in caught if str(w.message).startswith(("Attention in", "These modules"))]
    return cap, records, ours


def _longformer(window=4):
    import transformers as tf

    config = tf.LongformerConfig(vocab_size=50, attention_window=window, max_position_embeddings=64, **_SMALL)
    return tf.LongformerModel(config).eval()


def _tokens(length, padded_from=None):
    ids = torch.randint(3, 50, (3, length))
    mask = torch.ones(3, length, dtype=torch.long)
    if padded_from is not None:
        mask[1, padded_from:] = 0
    return ids, mask


@pytest.mark.parametrize("defer", [False, True], ids=["immediate", "deferred"])
@pytest.mark.parametrize("length", [13, 16], ids=["model-padded", "window-multiple"])
def test_longformer_band_globals_and_global_rows(length, defer):
    model = _longformer()
    ids, mask = _tokens(length, padded_from=length - 3)
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1  # a CLS-like global token in every sample
    glob[0, 5] = 1  # and a second one in the first (inside others' bands: each key counted once)
    inputs = dict(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
    expected = longformer_reference(model, **inputs)
    _, records, ours = _capture(model, defer=defer, **inputs)
    assert not ours
    assert list(records) == [f"encoder.layer.{i}.attention.self" for i in range(2)]
    for record, ref in zip(records.values(), expected, strict=True):
        assert record.weights.shape == (2, 4, length, length)  # the model's own padding trimmed off
        assert_close(record.weights, ref)
        assert record.layout == "banded" and record.path == "banded"
        assert record.health.relative_error < 1e-4  # map × (value | value_global) = the layer's output
        visible = record.visible.expand_as(record.weights)
        assert bool(visible[0, :, 10, 0].all())  # the global key
        assert not bool(visible[0, :, 10, 2].any())  # out of the band
        assert bool(visible[0, :, 0, length - 4].all())  # the global token reads everything unpadded
        assert not bool(visible[1, :, :, length - 3 :].any()) and float(record.weights[1, :, -1].sum()) == 0
        rows = record.weights[0].sum(-1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_longformer_pooled_while_computed_matches_the_exact_map():
    model = _longformer(window=8)
    ids, mask = _tokens(40)
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    inputs = dict(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
    _, exact, _ = _capture(model, **inputs)
    _, pooled, _ = _capture(model, max_tokens=20, **inputs)
    # by the pooling rule: the first token (the sink, here also the global one) alone, the other 39 in
    # contiguous blocks of 3 (blocks of 2 would make 1 + 20, over 20)
    groups = [[0]] + [list(range(t, t + 3)) for t in range(1, 40, 3)]
    for key, record in pooled.items():
        assert record.block == (3, 3) and record.weights.shape == (2, 4, 14, 14)
        w = exact[key].weights.double()
        rows = [torch.stack([w[..., q, :][..., k].sum(-1).mean(-1) for k in groups], -1) for q in groups]
        assert_close(record.weights, torch.stack(rows, -2).float())  # query rows averaged, keys summed


def _bigbird(random_blocks=1, train=False):
    import transformers as tf

    sparse = dict(attention_type="block_sparse", block_size=2, num_random_blocks=random_blocks)
    config = tf.BigBirdConfig(
        vocab_size=50, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        **sparse, **_SMALL,
    )  # fmt: skip
    return tf.BigBirdModel(config).train(train)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("random_blocks", [1, 2])
def test_bigbird_map_reproduces_the_layer_output(random_blocks, train):
    model = _bigbird(random_blocks, train)
    ids, mask = _tokens(23, padded_from=19)  # padded by the model to 24, and by the user from 19
    torch.manual_seed(1)
    _, records, ours = _capture(model, input_ids=ids, attention_mask=mask)
    torch.manual_seed(1)  # train mode draws random blocks from a seeded numpy stream: the same ones
    calls, hf_dense = bigbird_calls(model, input_ids=ids, attention_mask=mask)
    assert not ours and list(records) == list(calls) and len(calls) == 2
    for (key, (values, output)), hf in zip(calls.items(), hf_dense, strict=True):
        record = records[key]
        assert record.weights.shape == (2, 4, 23, 23) and record.layout == "block_sparse"
        ours_out = record.weights.double() @ values[:2, :, :23].double()
        assert_close(ours_out, output[:2, :, :23], tol=1e-5)  # the map is what the kernel applied
        live = record.weights.sum(-1)
        assert torch.allclose(live[0], torch.ones_like(live[0]), atol=1e-5)  # rows sum to 1 …
        assert float(live[1, :, 19:].abs().max()) == 0  # … except the user's padding, which reads nothing
        hidden = ~record.visible.expand_as(record.weights)
        assert float(record.weights[hidden].abs().max()) == 0 and bool(hidden[0, :, 8].any())
        # Hugging Face's reconstruction writes a repeated key block once: some of its rows miss weight
        # (in eval every random block is block 0); where it is whole it agrees with ours
        hf_rows = hf[:2, :, :23, :23].sum(-1)
        whole = (hf_rows - live).abs() < 1e-5
        assert_close(record.weights[whole], hf[:2, :, :23, :23][whole])
        if not train:
            assert bool((hf_rows[0] < 0.999).any())


def test_a_short_sequence_falls_back_to_full_attention_and_is_token_attention():
    model = _bigbird()
    assert {s.layout.reader for s in find_attention(model)} == {"bigbird"}
    ids, mask = _tokens(10)  # <= (5 + 2·r)·block: the model switches itself to full attention
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad(), capture_attention(model, samples=2):
            model(input_ids=ids, attention_mask=mask)
    sites = find_attention(model)
    assert {s.layout.kind for s in sites} == {"token"}  # found again: the model now runs full attention
    _, records, ours = _capture(model, input_ids=ids, attention_mask=mask)
    assert not ours and all(r.weights.shape == (2, 4, 10, 10) for r in records.values())
