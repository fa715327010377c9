"""``nn.MultiheadAttention``: what a tap ships of one call, and the weights and health made from it.

The tap projects the sampled rows on the training device (:func:`project`), so a capture ships the
rows it needs (queries, keys and values after the in-projection) and never the projection weights:
W_q, W_k and W_v stay where they are. The output projection travels only where the fidelity check can
use it (the module's own output is visible); elsewhere the per-head Gram matrices of ``out_proj``,
which is all the value norms need, travel instead (``E × E / H`` values, not ``E × E``).

Mirrors ``F.multi_head_attention_forward``: bool masks mean *masked* when True (the opposite of SDPA),
``bias_k``/``bias_v`` and ``add_zero_attn`` append one key (and value) each, a 3-D ``attn_mask`` is
per ``batch·head``, and with a mask ``is_causal`` is a hint only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_attnviz.capture.heads import append_extra
from lightning_attnviz.capture.pooling import EXACT, Computed, Storage
from lightning_attnviz.capture.probe import Probe, fidelity_tolerance, head_norms
from lightning_attnviz.capture.weights import _softmax_in_chunks


@dataclass(frozen=True)
class MHAInputs:
    """One ``nn.MultiheadAttention`` call, sampled rows only, batch first, in float32.

    ``hide_padded_queries``: self-attention, where padded query rows get no weight (on PyTorch's nested
    fast path they do not exist). ``v`` with ``out_weight``/``out_bias`` and the module's ``output`` are
    for the fidelity check and the value norms; ``out_gram`` stands in for ``out_weight`` where no
    output can be compared (a fused encoder layer), for the value norms only.

    Shape:
        q: ``(s, L, E)``; k, v: ``(s, S, E)`` (after the in-projection, before ``bias_k``/``bias_v``);
        key_padding_mask: ``(s, S)``; attn_mask: ``(L, S)`` or ``(s·H, L, S)``; output: ``(s, L, E)``;
        out_gram: ``(H, E/H, E/H)``.
    """

    q: Tensor
    k: Tensor
    num_heads: int
    bias_k: Tensor | None = None
    add_zero_attn: bool = False
    key_padding_mask: Tensor | None = None
    attn_mask: Tensor | None = None
    is_causal: bool = False
    hide_padded_queries: bool = False
    v: Tensor | None = None
    bias_v: Tensor | None = None
    out_weight: Tensor | None = None
    out_bias: Tensor | None = None
    out_gram: Tensor | None = None
    output: Tensor | None = None


@dataclass(frozen=True)
class MHAParams:
    """What one call projects with: the module's own tensors (views, never copies).

    Shape:
        q_weight, k_weight, v_weight: ``(E, E | kdim | vdim)``; in_bias: ``(3E,)``; out_weight: ``(E, E)``.
    """

    num_heads: int
    q_weight: Tensor
    k_weight: Tensor
    v_weight: Tensor | None
    in_bias: Tensor | None
    bias_k: Tensor | None
    bias_v: Tensor | None
    add_zero_attn: bool
    out_weight: Tensor | None
    out_bias: Tensor | None

    @classmethod
    def of(cls, mha: nn.MultiheadAttention) -> MHAParams:
        """The parameters of an ``nn.MultiheadAttention`` instance."""
        if mha._qkv_same_embed_dim:
            q, k, v = mha.in_proj_weight.chunk(3)
        else:
            q, k, v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        out = mha.out_proj
        return cls(mha.num_heads, q, k, v, mha.in_proj_bias, mha.bias_k, mha.bias_v, mha.add_zero_attn,
                   out.weight, out.bias)  # fmt: skip

    @classmethod
    def functional(cls, b: dict[str, Any]) -> MHAParams:
        """The parameters of an ``F.multi_head_attention_forward`` call, its bound arguments ``b``."""
        if b.get("use_separate_proj_weight", False):
            q, k, v = b.get("q_proj_weight"), b.get("k_proj_weight"), b.get("v_proj_weight")
            if q is None or k is None:  # as F.multi_head_attention_forward requires
                raise ValueError("`q_proj_weight` and `k_proj_weight` are needed without `in_proj_weight`")
        else:
            q, k, v = b["in_proj_weight"].chunk(3)
        return cls(b["num_heads"], q, k, v, b["in_proj_bias"], b["bias_k"], b["bias_v"],
                   b["add_zero_attn"], b["out_proj_weight"], b["out_proj_bias"])  # fmt: skip


@dataclass(frozen=True)
class MHACall:
    """What one call was given, as the module takes it (sequence first unless ``batch_first``)."""

    query: Tensor
    key: Tensor
    value: Tensor | None
    key_padding_mask: Tensor | None = None
    attn_mask: Tensor | None = None
    is_causal: bool = False
    batch_first: bool = False
    self_attention: bool = False  # padded query rows are hidden too
    output: Tensor | None = None  # the module's own output; None where it is not the attention's


def project(params: MHAParams, call: MHACall, samples: int) -> MHAInputs:
    """The sampled rows' projected queries, keys and values, on the call's device, in float32 (the
    precision the weights are computed in), with autocast off.

    Shape:
        see :class:`MHAInputs`.
    """

    def rows(t: Tensor | None) -> Tensor | None:
        if t is None or t.is_nested:
            return None
        t = t.detach()
        if t.dim() == 2:  # unbatched (L, E)
            return t.unsqueeze(0)
        return (t if call.batch_first else t.transpose(0, 1))[:samples]

    bias = None if params.in_bias is None else params.in_bias.detach().float().chunk(3)
    padding, mask = call.key_padding_mask, call.attn_mask
    if padding is not None:
        padding = padding.detach().reshape(-1, padding.shape[-1])[:samples]
    if mask is not None:
        mask = mask.detach()[: samples * params.num_heads] if mask.dim() == 3 else mask.detach()
    value, output = rows(call.value), rows(call.output)
    with torch.no_grad(), torch.autocast(call.query.device.type, enabled=False):
        q_bias, k_bias, v_bias = (None, None, None) if bias is None else bias
        query, key = rows(call.query), rows(call.key)
        if query is None or key is None:  # the nested fast path hands its tensors to `output` only
            raise ValueError("multi-head attention's query and key must be plain tensors")
        q = _linear(query, params.q_weight, q_bias)
        k = _linear(key, params.k_weight, k_bias)
        v = None if value is None or params.v_weight is None else _linear(value, params.v_weight, v_bias)
        out_w = None if v is None or params.out_weight is None else params.out_weight.detach().float()
        gram = None
        if out_w is not None and output is None:  # no fidelity check: the value norms need the Gram only
            gram = _gram(out_w, params.num_heads)
            out_w = None
    return MHAInputs(
        q=q,
        k=k,
        num_heads=params.num_heads,
        bias_k=_float(params.bias_k),
        add_zero_attn=params.add_zero_attn,
        key_padding_mask=padding,
        attn_mask=mask,
        is_causal=bool(call.is_causal),
        hide_padded_queries=call.self_attention,
        v=v,
        bias_v=_float(params.bias_v) if v is not None else None,
        out_weight=out_w,
        out_bias=_float(params.out_bias) if out_w is not None else None,
        out_gram=gram,
        output=output if v is not None else None,
    )


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.linear(x.float(), weight.detach().float(), bias)


def _float(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().float()


def _gram(out_weight: Tensor, heads: int) -> Tensor:
    """``(H, hd, hd)``: ``W_O^hᵀ W_O^h`` of each head's columns of the output projection."""
    w = out_weight.reshape(out_weight.shape[0], heads, -1).transpose(0, 1)  # (H, E_out, hd)
    return w.transpose(-2, -1) @ w


def samples_of(x: MHAInputs) -> int:
    return x.q.shape[0]


def mha_weights(x: MHAInputs, storage: Storage = EXACT, probe: Probe | None = None) -> Computed:
    """The per-head weights of one ``nn.MultiheadAttention`` call, from its projected rows.

    With ``hide_padded_queries`` (self-attention), rows of padded queries get no weight.

    Shape:
        weights: ``(s, num_heads, L, S)``.
    """
    s, length, embed = x.q.shape
    heads, head_dim = x.num_heads, embed // x.num_heads
    bias = _to_additive(x.attn_mask)
    if bias is not None and bias.dim() == 3:  # (s·H, L, S) -> (s, H, L, S)
        bias = bias.view(s, heads, *bias.shape[-2:])
    padding = _to_additive(x.key_padding_mask)
    k, extra = append_extra(x.k.float(), x.bias_k, x.add_zero_attn)
    if extra:
        bias = F.pad(bias, (0, extra)) if bias is not None else None
        padding = F.pad(padding, (0, extra)) if padding is not None else None
    hidden_rows = None
    if x.hide_padded_queries and padding is not None:
        hidden_rows = torch.isneginf(padding[:, : x.q.shape[1]])  # (s, L): self-attention, L == S
    if padding is not None:
        padding = padding[:, None, None, :]  # (s, 1, 1, S)
        bias = padding if bias is None else bias + padding
    q = x.q.float().view(s, length, heads, head_dim).transpose(1, 2)  # (s, H, L, hd)
    k = k.view(s, k.shape[1], heads, head_dim).transpose(1, 2)  # (s, H, S, hd)
    if bias is not None:
        while bias.dim() < 4:
            bias = bias.unsqueeze(0)
    causal = x.is_causal and x.attn_mask is None  # with a mask, MHA treats is_causal as a hint only
    scale = 1.0 / math.sqrt(head_dim)
    return _softmax_in_chunks(q, k, scale, bias, None, causal, hidden_rows, storage, probe)


def mha_probe(x: MHAInputs, dropout_p: float, sink_keys: int) -> Probe:
    """The probe of one call: the projected values (``bias_v`` and ``add_zero_attn`` appended as the
    module does), ``out_proj`` applied to A·V, and the module's output as the reference (the
    attention output before ``out_proj`` is not visible from outside)."""
    if x.v is None or (x.out_weight is None and x.out_gram is None):
        return Probe(sink_keys=sink_keys)
    v, _ = append_extra(x.v.float(), x.bias_v, x.add_zero_attn)
    s, keys, embed = v.shape
    values = v.view(s, keys, x.num_heads, embed // x.num_heads).transpose(1, 2)  # (s, H, S, hd)
    if x.out_weight is None:
        return Probe(values, None, None, head_norms(values, gram=x.out_gram), sink_keys, projected=True)
    w_out = x.out_weight.float()
    b_out = None if x.out_bias is None else x.out_bias.float()

    def project_heads(heads_out: Tensor) -> Tensor:  # (s, H, rows, hd) -> (s, rows, E)
        joined = heads_out.transpose(1, 2).reshape(heads_out.shape[0], heads_out.shape[2], -1)
        return F.linear(joined, w_out, b_out)

    expected = None if x.output is None or dropout_p > 0 else x.output
    tolerance = None if expected is None else fidelity_tolerance(expected.dtype)
    norms = head_norms(values, w_out)
    return Probe(values, expected, project_heads, norms, sink_keys, tolerance, projected=True)


def _to_additive(mask: Tensor | None) -> Tensor | None:
    """A float32 additive mask: True (masked) entries of a bool mask become -inf."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        zeros = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        return zeros.masked_fill(mask, float("-inf"))
    return mask.detach().float()
