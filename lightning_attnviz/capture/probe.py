"""Attention health and faithful maps: what a capture can say beyond the weights themselves.

- **Max logit.** The largest scaled logit that enters the softmax at a visible position (q·k·scale plus
  any additive mask, bias or ``score_mod``), per ``(sample, head)``. Logits that grow until softmax is
  one-hot precede divergence in large runs (Dehghani et al. 2023, ViT-22B, who add qk-layernorm
  against it; Wortsman et al. 2023 reproduce this "attention logit growth" in small models at high
  learning rates). It is read where the scores are computed anyway (:class:`Probe`), at no extra pass.
- **Fidelity.** The captured weights times the model's own values, compared with what the model's
  attention produced: the SDPA kernel's output, ``nn.MultiheadAttention``'s output (after its
  ``out_proj``: the attention output before it is not visible), or for eager attention the first
  ``attention @ values`` product the module computes after its softmax (weights changed in between,
  e.g. heads mixed after the softmax, are caught there). A maximum absolute error per layer; where no
  reference can be read (dropout in train mode, a fused encoder layer, no product seen) it is "not
  checked", never silently passed.
- **Value-weighted attention** (Kobayashi et al. 2020): ``‖α_ij · f(v_j)‖`` per head, where ``f`` is
  the identity at ``F.scaled_dot_product_attention`` (the output projection is the model's own code,
  not visible there) and the head's slice of ``out_proj`` for ``nn.MultiheadAttention``.

The drawing side (:mod:`lightning_attnviz.pipeline.health`) turns them into tags, pictures and warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_attnviz.capture.heads import batch_dims_to_heads

# Fidelity: relative error (max |error| / max |output|) above which a map is not what the kernel used.
# 1e-4 is far above float32 rounding of a recomputed softmax (~1e-6) and far below any real mismatch
# (a wrong mask or scale is O(1)). Half precision kernels round their own output to ~eps, so the bound
# is never tighter than 8·eps of the output's dtype (bf16: 0.06, fp16: 0.008).
FIDELITY_TOLERANCE = 1e-4


def fidelity_tolerance(dtype: torch.dtype) -> float:
    """The relative error a faithful map may show against a kernel output of ``dtype``."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(FIDELITY_TOLERANCE, 8 * eps)


@dataclass(frozen=True)
class Health:
    """What one attention call says about its own health, beside its weights.

    Attributes:
        max_logit: ``(s, H)`` float32, the largest scaled logit at a visible position (``-inf`` where
            nothing is visible); ``None`` where the path cannot see the logits.
        error: max absolute difference between captured weights · values (· ``out_proj``) and the
            model's own attention output, over the sampled rows that attend to anything; ``None``
            when the output could not be compared (eager softmax keeps the model's own weights).
        scale: max absolute value of that output (the error's reference, for the relative bound).
        tolerance: the relative error :func:`fidelity_tolerance` allows for the output's dtype.
        value_norms: ``(s, H, S)`` ‖f(v_j)‖ per key (see the module docstring for ``f``).
        value_sink: ``(s, H)`` mean over rows of the share of ``‖α_ij f(v_j)‖`` on the sink keys.
        projected: the value norms include the output projection.
    """

    max_logit: Tensor | None = None
    error: float | None = None
    scale: float | None = None
    tolerance: float | None = None
    value_norms: Tensor | None = None
    value_sink: Tensor | None = None
    projected: bool = False

    @property
    def relative_error(self) -> float | None:
        if self.error is None or self.scale is None:
            return None
        return self.error / max(self.scale, 1e-30)


class Probe:
    """Reads each block of scores and weights as :func:`~lightning_attnviz.capture.weights._softmax_in_chunks`
    computes them: the max logit always, and with ``values`` the fidelity and value-weighted sink.

    Args:
        values: ``(s, H, S, Ev)`` float32 values the weights multiply.
        expected: the model's output rows: ``(s, H, L, Ev)``, or with ``project`` ``(s, L, E)``.
        project: ``(s, H, rows, Ev) → (s, rows, E)`` (heads concatenated, ``out_proj`` applied).
        norms: ``(s, H, S)`` value norms for the value-weighted sink share.
        sink_keys: leading keys counted as the sink.
    """

    def __init__(
        self,
        values: Tensor | None = None,
        expected: Tensor | None = None,
        project: Callable[[Tensor], Tensor] | None = None,
        norms: Tensor | None = None,
        sink_keys: int = 1,
        tolerance: float | None = None,
        projected: bool = False,
    ) -> None:
        self.values, self.expected, self.project = values, expected, project
        self.norms, self.sink_keys, self.tolerance, self.projected = norms, sink_keys, tolerance, projected
        self.max_logit: Tensor | None = None
        self.error = 0.0 if expected is not None else None
        self.sink_total: Tensor | None = None
        self.sink_rows: Tensor | None = None

    def add(
        self, start: int, scores: Tensor | None, weights: Tensor, product: Tensor | None = None
    ) -> None:
        """Rows ``start : start + rows``: ``scores`` ``(s, H, rows, keys)`` with ``-inf`` where hidden
        (``None`` where the logits are not seen: eager attention), ``weights`` their softmax (rows with
        nothing visible zeroed); keys beyond ``keys`` are hidden. ``product``: the weights times the
        values, ``(s, H, rows, Ev)``, when the caller made it (rows that read values of their own);
        otherwise ``weights @ values``."""
        if scores is not None:
            top = scores.detach().float().amax(dim=(-2, -1))
            self.max_logit = top if self.max_logit is None else torch.maximum(self.max_logit, top)
        keys, stop = weights.shape[-1], start + weights.shape[-2]
        live = weights.sum(-1) > 0  # (s, H, rows): rows that attend to anything
        if self.expected is not None and product is None and self.values is not None:
            product = weights @ self.values[..., :keys, :]  # (s, H, rows, Ev)
        if self.expected is not None and product is not None:
            out = product  # (s, H, rows, Ev)
            rows = self.expected[..., start:stop, :].float()
            if self.project is not None:
                out, live_rows = self.project(out), live.all(1)[..., None]  # (s, rows, E), (s, rows, 1)
            else:
                live_rows = live[..., None]
            gap = torch.where(live_rows, (out - rows).abs(), 0.0)
            self.error = max(self.error or 0.0, float(gap.amax()) if gap.numel() else 0.0)
        if self.norms is not None:
            moved = weights * self.norms[:, :, None, :keys]  # ‖α_ij f(v_j)‖, (s, H, rows, keys)
            total = moved.sum(-1)
            share = torch.where(total > 0, moved[..., : self.sink_keys].sum(-1) / total.clamp_min(1e-30), 0.0)
            counted = total > 0
            add_total = share.sum(-1, dtype=torch.float64)
            add_rows = counted.sum(-1)
            self.sink_total = add_total if self.sink_total is None else self.sink_total + add_total
            self.sink_rows = add_rows if self.sink_rows is None else self.sink_rows + add_rows

    def result(self, max_logit: Tensor | None = None) -> Health:
        """What was read; ``max_logit`` stands in for paths that saw the logits elsewhere (eager)."""
        logit = self.max_logit if max_logit is None else max_logit
        scale = None
        if self.expected is not None:
            scale = float(self.expected.float().abs().amax()) if self.expected.numel() else 0.0
        sink = None
        if self.sink_total is not None and self.sink_rows is not None:
            sink = (self.sink_total / self.sink_rows.clamp_min(1)).float()
            sink = sink.masked_fill(self.sink_rows == 0, float("nan"))
        return Health(
            max_logit=None if logit is None else logit.float().cpu(),
            error=self.error,
            scale=scale,
            tolerance=self.tolerance,
            value_norms=None if self.norms is None else self.norms.float().cpu(),
            value_sink=None if sink is None else sink.cpu(),
            projected=self.projected,
        )


def logit_max(scores: Tensor) -> Tensor:
    """``(s, H)``: the largest finite entry of each ``(s, H, L, S)`` softmax input (eager attention
    masks with ``-inf`` or a large negative number; either way the max is at a visible key)."""
    s = scores.detach().float()
    return s.masked_fill(~torch.isfinite(s), float("-inf")).amax(dim=(-2, -1))


def head_norms(values: Tensor, out_weight: Tensor | None = None, gram: Tensor | None = None) -> Tensor:
    """``(s, H, S)`` ‖v_j‖, or ‖W_O^h v_j‖ with ``out_weight`` ``(E_out, H·hd)`` (the head's columns of
    the output projection), through the head's ``hd × hd`` Gram matrix so no ``(s, H, S, E)`` exists;
    ``gram`` ``(H, hd, hd)`` is that matrix, given instead of ``out_weight``.

    Shape:
        values: ``(s, H, S, hd)``.
    """
    v = values.float()
    heads, hd = v.shape[1], v.shape[-1]
    if gram is None and out_weight is not None:
        w = out_weight.float().reshape(out_weight.shape[0], heads, hd).transpose(0, 1)  # (H, E_out, hd)
        gram = w.transpose(-2, -1) @ w  # (H, hd, hd)
    if gram is None:
        return v.norm(dim=-1)
    sq = ((v @ gram.float()[None]) * v).sum(-1)
    return sq.clamp_min(0).sqrt()


# -- probes for each path (plain tensors: built by pending.compute) -------------------------------------


def sdpa_probe(q: Tensor, v: Tensor | None, out: Tensor | None, dropout_p: float, sink_keys: int) -> Probe:
    """The probe of one SDPA call: values repeated per query head (GQA), the kernel's output as the
    reference unless dropout made it random.

    Shape:
        q: ``(s, ..., Hq, L, E)``; v: ``(s, ..., Hk, S, Ev)``; out: ``(s, ..., Hq, L, Ev)``.
    """
    if v is None:
        return Probe(sink_keys=sink_keys)
    values = batch_dims_to_heads(v.detach()).float()
    q_heads = batch_dims_to_heads(q[:1]).shape[1]
    if values.shape[1] != q_heads:
        values = values.repeat_interleave(q_heads // values.shape[1], dim=1)
    expected = None if out is None or dropout_p > 0 else batch_dims_to_heads(out.detach())
    tolerance = None if expected is None else fidelity_tolerance(expected.dtype)
    return Probe(values, expected, None, head_norms(values), sink_keys, tolerance)


def eager_probe(values: Tensor | None, product: Tensor | None, sink_keys: int) -> Probe:
    """The probe of an eager attention: the values the module multiplied its attention with and the
    product it computed (the reference). Captured weights that are the module's own softmax output
    reproduce it exactly, unless the module changed them in between (mixed its heads, say).

    Shape:
        values: ``(s, H, S, Ev)``; product: ``(s, H, L, Ev)``.
    """
    if values is None:
        return Probe(sink_keys=sink_keys)
    v = values.detach().float()
    tolerance = None if product is None else fidelity_tolerance(product.dtype)
    return Probe(v, product, None, head_norms(v), sink_keys, tolerance)
