"""The capture_attention contract: arguments, selection, cleanup, grad modes, autocast, compile."""

import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_no_taps, reference_sdpa_weights
from models import GPT, GPTConfig, gpt_reference_weights
from torch import nn

from lightning_attnviz import capture_attention, find_attention
from lightning_attnviz.capture.inputs import compute


@pytest.fixture
def gpt():
    return GPT(GPTConfig(n_layer=3)).eval()


@pytest.mark.parametrize("samples", [0, -1, 1.5, "2", True, None])
def test_samples_must_be_a_positive_int(gpt, samples):
    error = ValueError if isinstance(samples, int) and not isinstance(samples, bool) else TypeError
    with (
        pytest.raises(error, match=r"`samples` must be an int >= 1, got"),
        capture_attention(gpt, samples=samples),
    ):
        pass


def test_module_selection_by_name_pattern_and_predicate(gpt):
    idx = torch.randint(0, 32, (2, 8))
    for modules, expected in [
        ("h.1.attn", ["h.1.attn"]),
        (["h.0.attn", "h.2.attn"], ["h.0.attn", "h.2.attn"]),
        ("h.*.attn", ["h.0.attn", "h.1.attn", "h.2.attn"]),
        (lambda name, module: name.endswith("2.attn"), ["h.2.attn"]),
    ]:
        with capture_attention(gpt, modules=modules) as cap:
            gpt(idx)
        assert list(cap.maps) == expected


def test_unknown_module_names_list_close_matches(gpt):
    with pytest.raises(ValueError, match=r"`modules`: no module matches the name 'h.1.atn'.*'h.1.attn'"):
        find_attention(gpt, ["h.1.atn"])
    with pytest.raises(ValueError, match=r"no module matches the pattern 'blocks\.\*\.attn'"):
        find_attention(gpt, "blocks.*.attn")
    with pytest.raises(TypeError, match=r"`modules` must be None, a name"):
        find_attention(gpt, 3)


def test_no_attention_found_warns_and_returns_empty():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.warns(
        UserWarning,
        match=r"No attention modules found in Sequential: searched for "
        r"nn.MultiheadAttention and modules whose class name",
    ):
        with capture_attention(model) as cap:
            model(torch.randn(2, 4))
    assert cap.maps == {}


def test_watched_module_without_attention_warns(gpt):
    with (
        pytest.warns(UserWarning, match=r"ran but computed no attention.*'h.0.mlp'"),
        capture_attention(gpt, modules="h.0.mlp"),
    ):
        gpt(torch.randint(0, 32, (2, 8)))


def test_exception_inside_the_block_restores_everything():
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2).eval()
    gpt = GPT().eval()

    class Boom(RuntimeError):
        pass

    for model, x in ((gpt, torch.randint(0, 32, (2, 8))), (encoder, torch.randn(2, 5, 16))):
        with pytest.raises(Boom), torch.no_grad(), capture_attention(model):
            model(x)
            raise Boom
        assert_no_taps(model)

    # raised from inside the model's forward, while the function mode is on
    def explode(*args, **kwargs):
        raise Boom

    gpt.h[1].mlp.forward = explode
    with pytest.raises(Boom), capture_attention(gpt):
        gpt(torch.randint(0, 32, (2, 8)))
    del gpt.h[1].mlp.forward
    assert_no_taps(gpt)
    assert torch._C._len_torch_function_stack() == 0
    assert torch.backends.mha.get_fastpath_enabled()


def test_inference_mode_results_are_normal_tensors(gpt):
    idx = torch.randint(0, 32, (3, 8))
    with torch.inference_mode(), capture_attention(gpt) as cap:
        gpt(idx)
    expected = gpt_reference_weights(gpt, idx)
    for weights, ref in zip(cap.maps.values(), expected, strict=True):
        assert not weights.is_inference()
        assert_close(weights, ref[:2])
        weights.mul_(1)  # usable outside inference mode


def test_train_mode_dropout_is_not_part_of_the_weights_and_rng_is_untouched():
    class DropAttention(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=0.5 if self.training else 0.0)

    model = DropAttention().train()
    q, k, v = (torch.randn(3, 2, 6, 8, requires_grad=True) for _ in range(3))
    torch.manual_seed(1)
    plain = model(q, k, v)
    state = torch.get_rng_state()
    torch.manual_seed(1)
    with capture_attention(model) as cap:
        out = model(q, k, v)
    assert torch.equal(out, plain)
    assert torch.equal(torch.get_rng_state(), state)
    assert cap.records[""].dropout_p == 0.5
    assert not cap.maps[""].requires_grad
    assert_close(cap.maps[""], reference_sdpa_weights(q[:2].detach(), k[:2].detach()))
    out.sum().backward()  # the graph of the user's batch is intact


def test_autocast_weights_are_float32_from_the_kernels_inputs(gpt):
    idx = torch.randint(0, 32, (3, 8))
    seen = []
    gpt.h[0].attn.c_attn.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = gpt(idx)
        with capture_attention(gpt) as cap:
            out = gpt(idx)
    assert torch.equal(out, plain)
    weights = cap.maps["h.0.attn"]
    assert weights.dtype == torch.float32
    q, k, _ = seen[-1].split(32, dim=2)
    assert q.dtype == torch.bfloat16
    q, k = (t.view(3, 8, 4, 8).transpose(1, 2) for t in (q, k))
    assert_close(weights, reference_sdpa_weights(q[:2], k[:2], is_causal=True))
    # and close to the float32 model's own weights, within bfloat16's precision
    assert_close(weights, gpt_reference_weights(gpt, idx)[0][:2], tol=3e-2)


def test_torch_compile_is_captured_with_outputs_unchanged(gpt):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(gpt)
    graphs = []
    with torch.no_grad():
        for _ in range(3):
            idx = torch.randint(0, 32, (2, 10))
            plain = compiled(idx)
            with capture_attention(compiled) as cap:
                out = compiled(idx)
            assert torch.equal(out, plain)
            assert list(cap.maps) == ["h.0.attn", "h.1.attn", "h.2.attn"]  # names of the user's model
            for weights, ref in zip(cap.maps.values(), gpt_reference_weights(gpt, idx), strict=True):
                assert_close(weights, ref)
            assert torch.equal(compiled(idx), plain)
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[2]  # one recompile when capture first turns on, none after
    assert_no_taps(gpt)


def test_repeated_forwards_in_one_context_get_call_indices(gpt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with capture_attention(gpt, modules="h.0.attn") as cap:
            gpt(torch.randint(0, 32, (2, 8)))
            gpt(torch.randint(0, 32, (2, 4)))
    assert list(cap.maps) == ["h.0.attn", "h.0.attn#1"]
    assert cap.maps["h.0.attn#1"].shape == (2, 4, 4, 4)
    cap.clear()
    assert cap.maps == {}


def test_maps_are_freed_as_soon_as_the_capture_is_dropped(gpt):
    """No reference cycle: large maps must not wait for a garbage-collector pass."""
    import gc
    import weakref

    gc.disable()
    try:
        with capture_attention(gpt) as cap:
            gpt(torch.randint(0, 32, (2, 8)))
        ref = weakref.ref(cap.maps["h.0.attn"])
        del cap
        assert ref() is None
    finally:
        gc.enable()


class BiasAttention(nn.Module):
    """SDPA with a learned additive bias passed as the mask: it changes in place with training."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(3, 2, 5, 5))

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)


@pytest.mark.parametrize("kind", ["sdpa", "eager", "encoder_padding", "mha_3d_mask", "learned_bias"])
def test_deferred_capture_equals_immediate_even_if_the_model_changes_after(kind):
    """`defer=True` keeps copies of the sampled inputs; compute() makes the weights from them later."""
    if kind == "learned_bias":
        model = BiasAttention()
        args = (torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4))
    elif kind in ("sdpa", "eager"):
        model = GPT(GPTConfig(flash=kind == "sdpa")).eval()
        args = (torch.randint(0, 32, (4, 9)),)
    elif kind == "encoder_padding":
        model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2).eval()
        padding = torch.arange(7)[None, :] >= torch.tensor([7, 5, 3])[:, None]
        args = (torch.randn(3, 7, 16), None, padding)
    else:
        model = nn.MultiheadAttention(16, 4)  # sequence first
        x = torch.randn(6, 3, 16)
        args = (x, x, x, None, True, torch.randn(3 * 4, 6, 6))
    with torch.no_grad():
        with capture_attention(model) as now:
            model(*args)
        with capture_attention(model, defer=True) as later:
            model(*args)
        for p in model.parameters():  # training goes on before the writer thread reads the maps
            p.mul_(0.5)
    assert later.records == {}  # nothing computed while the model ran
    assert [p.key for p in later.pending] == list(now.maps)
    deferred = [compute(p) for p in pickle.loads(pickle.dumps(later.pending))]  # as the drawing process
    for (key, weights), record in zip(now.maps.items(), deferred, strict=True):
        assert torch.equal(weights, record.weights), key
