"""Attention health: max logit, fidelity and value-weighted attention, against independent float64
references, and through a real Trainer."""

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import assert_no_taps
from lightning_models import LitGPT, make_trainer, read_events, token_loader
from torch import nn

from lightning_attnviz import AttentionMonitor, capture_attention
from lightning_attnviz.capture.inputs import compute
from lightning_attnviz.capture.probe import Health, head_norms
from lightning_attnviz.pipeline.health import HealthWarnings
from lightning_attnviz.pipeline.settings import LOGIT_GROWTH, MAX_LOGIT

B, H, L, S, E = 3, 2, 5, 7, 4


def _reference_scores(q, k, mask=None, causal=False, scale=None):
    """q·kᵀ·scale + mask in float64, -inf where hidden."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q.double() @ k.double().transpose(-2, -1) * scale
    if causal:
        scores = scores.masked_fill(~torch.ones(scores.shape[-2:], dtype=torch.bool).tril(), -math.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask.double()
    return scores


class SDPAttention(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.kw = kw

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **self.kw)


def _capture(module, *args, samples=2):
    with torch.no_grad():
        expected = module(*args)
        with capture_attention(module, samples=samples, defer=True) as cap:
            out = module(*args)
    assert torch.equal(
        out[0] if isinstance(out, tuple) else out, expected[0] if isinstance(expected, tuple) else expected
    )
    assert_no_taps(module)
    return [compute(p) for p in cap.pending]


def test_max_logit_of_known_logits():
    # q·k is known by construction: key j is j·e0, the query c·e0, so the largest logit is c·(S-1)·scale
    q = torch.zeros(B, H, L, E)
    q[..., 0] = 3.0
    k = torch.zeros(B, H, S, E)
    k[..., 0] = torch.arange(S, dtype=torch.float32)
    (record,) = _capture(SDPAttention(scale=0.5), q, k, torch.randn(B, H, S, E))
    assert torch.allclose(record.health.max_logit, torch.full((2, H), 3.0 * (S - 1) * 0.5))


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(is_causal=True), dict(scale=0.3), dict(attn_mask="bool"), dict(attn_mask="float")],
    ids=["plain", "causal", "scale", "bool_mask", "float_mask"],
)
def test_max_logit_and_fidelity_sdpa(kw):
    q, k, v = torch.randn(B, H, L, E) * 3, torch.randn(B, H, S, E) * 3, torch.randn(B, H, S, E)
    mask = kw.pop("attn_mask", None)
    if mask == "bool":
        mask = torch.rand(B, 1, L, S) > 0.3
        mask[..., 0] = True
    elif mask == "float":
        mask = torch.randn(B, H, L, S).masked_fill(torch.rand(B, H, L, S) > 0.8, -math.inf)
        mask[..., 0] = 0.0
    if mask is not None:
        kw["attn_mask"] = mask
    (record,) = _capture(SDPAttention(**kw), q, k, v)
    scores = _reference_scores(
        q[:2], k[:2], None if mask is None else mask[:2], kw.get("is_causal", False), kw.get("scale")
    )
    expected = scores.amax(dim=(-2, -1)).float()
    assert torch.allclose(record.health.max_logit, expected, atol=1e-5)
    assert record.health.error < 1e-5
    assert record.health.relative_error < 1e-5


def test_max_logit_and_fidelity_mha():
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(3, 6, 8)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True
    (record,) = _capture(mha, x, x, x, padding)
    w_q, w_k, _ = mha.in_proj_weight.double().chunk(3)
    b_q, b_k, _ = mha.in_proj_bias.double().chunk(3)
    q = (x[:2].double() @ w_q.T + b_q).view(2, 6, 2, 4).transpose(1, 2)
    k = (x[:2].double() @ w_k.T + b_k).view(2, 6, 2, 4).transpose(1, 2)
    scores = _reference_scores(q, k, ~padding[:2, None, None, :])
    assert torch.allclose(record.health.max_logit, scores.amax(dim=(-2, -1)).float(), atol=1e-5)
    assert record.health.error < 1e-5
    assert record.health.projected


def test_max_logit_eager_softmax_is_the_models_own():
    from models import GPT, GPTConfig

    model = GPT(GPTConfig(flash=False)).eval()
    idx = torch.randint(0, 32, (3, 10))
    records = _capture(model, idx)
    attn = model.h[0].attn
    with torch.no_grad():
        x = model.h[0].ln_1(model.wte(idx[:2]) + model.wpe(torch.arange(10)))
        q, k, _ = attn.c_attn(x).split(32, dim=2)
        q, k = (t.view(2, 10, 4, 8).transpose(1, 2) for t in (q, k))
    expected = _reference_scores(q, k, causal=True).amax(dim=(-2, -1)).float()
    assert torch.allclose(records[0].health.max_logit, expected, atol=1e-5)
    # the model's own weights times the values it multiplied them with give back its own product
    assert records[0].health.error is not None and records[0].health.error < 1e-6


def test_value_norms_with_the_output_projection():
    values, w = torch.randn(2, 3, 5, 4), torch.randn(6, 12)
    expected = torch.stack(
        [(values[:, h].double() @ w[:, 4 * h : 4 * h + 4].double().T).norm(dim=-1) for h in range(3)], dim=1
    )
    assert torch.allclose(head_norms(values, w).double(), expected, atol=1e-4)
    assert torch.allclose(head_norms(values), values.norm(dim=-1))


class ScaledQueryMHA(nn.MultiheadAttention):
    """Deliberately wrong for a capture: it attends with twice the query it was called with."""

    def forward(self, query, key, value, *args, **kwargs):
        return super().forward(query * 2, key, value, *args, **kwargs)


class LitMHA(pl.LightningModule):
    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.attn = (ScaledQueryMHA if wrong else nn.MultiheadAttention)(16, 2, batch_first=True)
        self.head = nn.Linear(16, 32)

    def forward(self, idx):
        x = self.embed(idx)
        return self.head(self.attn(x, x, x, need_weights=False)[0])

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]).flatten(0, 1), batch[1].flatten())

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fidelity_in_a_fit_and_on_a_wrong_model(tmp_path):
    trainer = make_trainer(tmp_path / "ok", [AttentionMonitor(plots=["heatmap", "stats", "value_weighted"])])
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    for layer in ("model.h.0.attn", "model.h.1.attn"):
        assert [e.step for e in events.Scalars(f"attention_health/max_logit/{layer}")] == [2, 5]
        assert max(e.value for e in events.Scalars(f"attention_health/fidelity/{layer}")) < 1e-5
        assert events.Scalars(f"attention_health/value_sink/{layer}")
        assert events.Images(f"attention/sample_0/{layer}/value_weighted")
    assert events.Images("attention/stats/max_logit")
    table = events.Tensors("attention/modules/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "fidelity (max abs error)" in table and "(ok)" in table

    trainer = make_trainer(tmp_path / "wrong", [AttentionMonitor(plots=["heatmap"])])
    with pytest.warns(
        RuntimeWarning, match=r"captured weights of 'attn' do not reproduce the model's attention"
    ):
        trainer.fit(LitMHA(wrong=True), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    assert min(e.value for e in events.Scalars("attention_health/fidelity/attn")) > 1e-2
    table = events.Tensors("attention/modules/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "MISMATCH" in table


def test_per_head_value_sink_scalars_are_the_heads_shares_whose_mean_the_layer_logs(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"], head_stats=True)])
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    for layer in ("model.h.0.attn", "model.h.1.attn"):
        tag = f"attention_health/value_sink/{layer}"
        layer_values = {e.step: e.value for e in events.Scalars(tag)}
        heads = [{e.step: e.value for e in events.Scalars(f"{tag}/head_{h}")} for h in range(4)]
        assert sorted(layer_values) == [2, 5]
        for step, value in layer_values.items():
            shares = [head[step] for head in heads]
            assert all(0.0 <= share <= 1.0 for share in shares), shares  # a share of the output norm
            assert math.isclose(sum(shares) / len(shares), value, rel_tol=1e-5)


class KnownAttention(nn.Module):
    """One head, frozen q projection, keys and values the inputs: logits known from the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.qk = nn.Linear(8, 8, bias=False).requires_grad_(False)
        self.temperature = 1.0

    def forward(self, x):
        x = x[:, None]  # (B, 1, L, 8)
        return F.scaled_dot_product_attention(self.qk(x), x, x, scale=self.temperature)[:, 0]


class GrowingLogits(pl.LightningModule):
    """Frozen attention whose scale grows 10× per epoch: its logits are known at every capture."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 8).requires_grad_(False)
        self.attn = KnownAttention()
        self.head = nn.Linear(8, 32)

    def forward(self, idx):
        return self.head(self.attn(self.embed(idx)))

    def on_train_epoch_start(self):
        self.attn.temperature = 10.0**self.current_epoch

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]).flatten(0, 1), batch[1].flatten())

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.0)


def _known_max_logit(model, val):
    fixed = next(iter(val))[0][:2]
    with torch.no_grad():
        x = model.embed(fixed)
        return float((model.attn.qk(x) @ x.transpose(-2, -1)).max())


def test_logit_growth_warns_and_scalars_match_the_known_logits(tmp_path):
    model, val = GrowingLogits(), token_loader(seed=1)
    base = _known_max_logit(model, val)  # frozen weights: the same at every capture, times the scale
    # above max_logit / 2 and grown 100×, but below max_logit: only the growth warning fires
    monitor = AttentionMonitor(plots=["heatmap"], max_logit=150 * base)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3)
    with pytest.warns(
        RuntimeWarning, match=r"logit of 'attn' grew from .* \(×100\.0 ≥ logit_growth=4\) by step 8"
    ):
        trainer.fit(model, token_loader(), val)
    events = read_events(trainer.logger.log_dir)
    got = [e.value for e in events.Scalars("attention_health/max_logit/attn")]
    assert got == pytest.approx([base * 10.0**epoch for epoch in range(3)], rel=1e-5)


def test_max_logit_warning(tmp_path):
    model, val = GrowingLogits(), token_loader(seed=1)
    monitor = AttentionMonitor(plots=["heatmap"], max_logit=5 * _known_max_logit(model, val))
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    with pytest.warns(
        RuntimeWarning, match=r"largest attention logit of 'attn' is .* at step 5, above max_logit"
    ):
        trainer.fit(model, token_loader(), val)


def test_max_logit_levels_from_the_literature_warn_once_each():
    # max_logit=100: Kimi K2's QK-Clip cap; then Wortsman et al.'s 1e3 and 1e4
    warnings = HealthWarnings(MAX_LOGIT, LOGIT_GROWTH)
    said = [warnings.check("attn", Health(max_logit=torch.tensor([[top, 1.0]])), step) for step, top in (
        (1, 90.0), (2, 150.0), (3, 160.0), (4, 2e3), (5, 3e3), (6, 2e4), (7, 5e4)
    )]  # fmt: skip
    said = [[m for m in s if "grew from" not in m] for s in said]  # the growth warning is its own rule
    assert [len(s) for s in said] == [0, 1, 0, 1, 0, 1, 0]
    assert "above max_logit=100, the cap Kimi K2's QK-Clip enforces" in said[1][0]
    assert "above 1000, where loss degrades from about 1e3 (Wortsman et al. 2023)" in said[3][0]
    assert "above 10000, where every run whose attention logits exceeded 1e4 diverged" in said[5][0]
    jump = HealthWarnings(50.0, LOGIT_GROWTH).check("attn", Health(max_logit=torch.tensor([[2e4]])), 1)
    assert len(jump) == 1 and "above 10000" in jump[0]  # past every level at once: the highest is said
    high = HealthWarnings(5e3, LOGIT_GROWTH)
    said = [high.check("attn", Health(max_logit=torch.tensor([[v]])), 1) for v in (2e3, 6e3, 2e4)]
    said = [[m for m in s if "grew from" not in m] for s in said]
    assert [len(s) for s in said] == [0, 1, 1] and "max_logit=5000:" in said[1][0]  # 1e3 is below it


class MixedAttention(nn.Module):
    """Eager attention that mixes its heads after the softmax (talking heads, Shazeer et al. 2020), as
    a custom module written without the name that would tell: the weights it multiplies its values
    with are not its softmax output. With ``mix=False`` it is plain eager attention; ``einsum`` makes
    the product with ``torch.einsum``, which the capture does not read."""

    def __init__(self, mix: bool = True, einsum: bool = False) -> None:
        super().__init__()
        self.qkv, self.heads, self.einsum = nn.Linear(16, 48), 4, einsum
        self.mix = nn.Parameter(torch.eye(4) + 0.5 * torch.randn(4, 4)) if mix else None

    def forward(self, x):
        b, length, _ = x.shape
        q, k, v = (t.view(b, length, 4, 4).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        attn = (q @ k.transpose(-2, -1) * 0.5).softmax(dim=-1)  # (B, H, L, L)
        if self.mix is not None:
            attn = torch.einsum("bhij,hg->bgij", attn, self.mix)
        out = torch.einsum("bhij,bhjd->bhid", attn, v) if self.einsum else attn @ v
        return out.transpose(1, 2).reshape(b, length, 16)


class LitMixed(LitMHA):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.attn = MixedAttention(**kw)

    def forward(self, idx):
        return self.head(self.attn(self.embed(idx)))


@pytest.mark.parametrize(
    ("kw", "cell"),
    [
        (dict(mix=True), "MISMATCH"),
        (dict(mix=False), "(ok)"),
        (dict(mix=False, einsum=True), "not checked (no weights @ values product seen after the softmax)"),
    ],
    ids=["heads_mixed_after_softmax", "plain_eager", "product_not_seen"],
)
def test_eager_fidelity_flags_weights_changed_after_the_softmax(tmp_path, kw, cell):
    import warnings

    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"])], max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(LitMixed(**kw), token_loader(), token_loader(seed=1))
    flagged = [w for w in caught if "do not reproduce the model's attention output" in str(w.message)]
    assert len(flagged) == (1 if kw.get("mix") else 0)
    events = read_events(trainer.logger.log_dir)
    table = events.Tensors("attention/modules/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| attn |" in table and cell in table
    fidelity = (
        [e.value for e in events.Scalars("attention_health/fidelity/attn")] if "not" not in cell else []
    )
    if kw.get("mix"):
        assert min(fidelity) > 1e-2
    elif "ok" in cell:
        assert max(fidelity) < 1e-6
