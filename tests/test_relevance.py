"""Gradient-weighted relevance (Chefer et al. 2021) against a plain float64 reference, on fused and
eager models, and through a real Trainer with the training state left untouched."""

import copy

import pytest
import pytorch_lightning as pl
import torch
from conftest import assert_no_taps
from lightning_models import VOCAB, LitGPT, LitViT, image_loader, make_trainer, read_events, token_loader
from models import GPT, GPTConfig, timm_vit

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.capture.discover import find_attention
from lightning_attnviz.capture.relevance import relevance_pass


def _call(model, x):
    return model(x)


def plain_relevance(model, x, attention_outputs, row, target=None):
    """The reference: a float64 copy, each layer's attention taken where the model itself made it (a
    forward hook on the module that receives the softmax output), retain_grad, backward of the
    predicted logit (or of ``target(logits)``), then R = I + Σ mean_h (∇A ⊙ A)⁺ · R by hand."""
    model = model.double().eval()  # the caller's own copy
    x = x.double() if x.is_floating_point() else x
    maps = []

    def keep(module, args, out):
        args[0].retain_grad()
        maps.append(args[0])

    handles = [m.register_forward_hook(keep) for m in attention_outputs(model)]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    picked = logits[:, -1] if logits.dim() == 3 else logits
    chosen = target(logits) if target else picked.gather(1, picked.argmax(1, keepdim=True))
    chosen.sum().backward()
    n = maps[0].shape[-1]
    r = torch.eye(n, dtype=torch.float64).repeat(x.shape[0], 1, 1)
    for a in maps:
        r = r + (a.grad * a).clamp(min=0).mean(1) @ r
    return r.detach()


class SoftmaxOut(torch.nn.Module):
    """Marks nanoGPT's eager softmax output for the reference's hook (an identity in the graph)."""

    def forward(self, att):
        return att


def _gpt_with_marks(model):
    """nanoGPT's eager attention, with the softmax output passed through a hookable identity."""
    import math

    import torch.nn.functional as F

    for block in model.h:
        attn = block.attn
        attn.mark = SoftmaxOut()

        def forward(x, attn=attn):
            B, T, C = x.size()
            q, k, v = attn.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(attn.bias[:, :, :T, :T] == 0, float("-inf"))
            att = attn.mark(F.softmax(att, dim=-1))
            return attn.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))

        attn.forward = forward
    return model


@pytest.mark.parametrize("flash", [True, False], ids=["fused_sdpa", "eager_softmax"])
def test_text_model_matches_the_plain_reference(flash):
    model = GPT(GPTConfig(flash=flash)).eval()
    x = torch.randint(0, 32, (2, 12))
    before = model(x)
    maps, skipped = relevance_pass(model, x, _call, find_attention(model))
    assert torch.equal(model(x), before)  # the user's outputs unchanged
    assert_no_taps(model)
    assert not skipped and maps[0].row == 11 and maps[0].layers == ("h.0.attn", "h.1.attn")
    reference = _gpt_with_marks(GPT(GPTConfig(flash=False)))
    reference.load_state_dict(model.state_dict())
    expected = plain_relevance(reference, x, lambda m: [b.attn.mark for b in m.h], row=11)
    for m in maps:
        assert torch.allclose(torch.from_numpy(m.matrix).double(), expected[m.sample], atol=1e-4)
    assert (expected - torch.eye(12)).abs().max() > 1e-3  # the layers do add relevance


@pytest.mark.parametrize("fused", [True, False], ids=["fused_sdpa", "eager_softmax"])
def test_small_vit_matches_the_plain_reference(fused):
    model = timm_vit(fused=fused)
    images = torch.randn(2, 3, 32, 32)
    before = model(images)
    maps, _ = relevance_pass(model, images, _call, find_attention(model))
    assert torch.equal(model(images), before)
    reference = copy.deepcopy(model)
    for block in reference.blocks:
        block.attn.fused_attn = False
    expected = plain_relevance(reference, images, lambda m: [b.attn.attn_drop for b in m.blocks], row=0)
    assert maps[0].row == 0 and maps[0].matrix.shape == (17, 17)
    for m in maps:
        assert torch.allclose(torch.from_numpy(m.matrix).double(), expected[m.sample], atol=1e-4)


def test_training_state_is_untouched():
    model = GPT(GPTConfig(flash=True))
    model.train()
    x = torch.randint(0, 32, (2, 12))
    model(x).sum().backward()  # gradients of a training step in progress
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    maps, _ = relevance_pass(model, x, _call, find_attention(model))
    assert [m.sample for m in maps] == [0, 1]
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())


def test_user_target():
    model = GPT(GPTConfig(flash=True)).eval()
    x = torch.randint(0, 32, (2, 12))
    token_3 = lambda out: out[:, -1, 3]  # noqa: E731 - the default would explain the argmax instead
    maps, _ = relevance_pass(model, x, _call, find_attention(model), target_fn=token_3)
    assert maps[0].target == "the user's relevance_target"
    reference = _gpt_with_marks(GPT(GPTConfig(flash=False)))
    reference.load_state_dict(model.state_dict())
    expected = plain_relevance(reference, x, lambda m: [b.attn.mark for b in m.h], row=11, target=token_3)
    for m in maps:
        assert torch.allclose(torch.from_numpy(m.matrix).double(), expected[m.sample], atol=1e-4)
    default, _ = relevance_pass(model, x, _call, find_attention(model))
    assert not torch.allclose(torch.from_numpy(maps[0].matrix), torch.from_numpy(default[0].matrix))


def _fit(tmp_path, callbacks):
    pl.seed_everything(7, verbose=False)
    model = LitGPT()
    trainer = make_trainer(tmp_path, callbacks)
    trainer.fit(model, token_loader(), token_loader(seed=1))
    return model, trainer


def test_fit_with_relevance_is_bit_identical_and_draws(tmp_path):
    plain, _ = _fit(tmp_path / "plain", [])
    watched, trainer = _fit(
        tmp_path / "watched", [AttentionMonitor(relevance=True, every_n_steps=2, tokens=VOCAB)]
    )
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    events = read_events(trainer.logger.log_dir)
    for sample in (0, 1):
        assert [e.step for e in events.Images(f"attention/sample_{sample}/relevance")] == [1, 2, 3, 5]
    assert_no_taps(watched)


def test_vit_fit_draws_relevance_over_the_image(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(relevance=True)], max_epochs=1)
    trainer.fit(LitViT("timm"), image_loader(), image_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    (image,) = events.Images("attention/sample_0/relevance")
    assert image.width > 100 and image.height > 100


def test_relevance_is_saved_with_the_capture_and_redrawn_by_the_cli(tmp_path, capsys):
    import io

    import numpy as np
    from PIL import Image

    from lightning_attnviz.__main__ import _file_name, main
    from lightning_attnviz.sinks.capture_file import load_capture

    model = LitViT("timm")
    trainer = make_trainer(tmp_path, [AttentionMonitor(relevance=True, plots=["overlay"])], max_epochs=1)
    trainer.fit(model, image_loader(), image_loader(seed=1))  # one capture, with the final weights
    (path,) = (tmp_path / "tb" / "version_0" / "attention_captures").glob("*.npz")
    saved = load_capture(path)
    reference = copy.deepcopy(model.vit)
    for block in reference.blocks:
        block.attn.fused_attn = False
    images = next(iter(image_loader(seed=1)))[0][:2]  # the fixed samples: the first validation rows
    expected = plain_relevance(reference, images, lambda m: [b.attn.attn_drop for b in m.blocks], row=0)
    assert [r.sample for r in saved.relevance] == [0, 1] and saved.relevance[0].matrix.shape == (21, 21)
    for r in saved.relevance:
        assert r.row == 0 and r.layers == ("vit.blocks.0.attn", "vit.blocks.1.attn")
        assert torch.allclose(torch.from_numpy(r.matrix).double(), expected[r.sample], atol=1e-4)
    assert main(["render", str(path), "--plots", "relevance", "--out", str(tmp_path / "png")]) == 0
    logged = read_events(trainer.logger.log_dir).Images("attention/sample_1/relevance")[-1]
    drawn = tmp_path / "png" / _file_name("attention/sample_1/relevance", ".png")
    as_rgb = [
        np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
        for b in (logged.encoded_image_string, drawn.read_bytes())
    ]
    assert np.array_equal(*as_rgb)
    assert not capsys.readouterr().err
