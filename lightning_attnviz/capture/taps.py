"""The taps: what :class:`~lightning_attnviz.capture.context.AttentionCapture` reads at each site.

- ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``: :func:`mha_tap` and
  :func:`encoder_layer_tap` run ahead of the instance's own ``forward`` and record its inputs with the
  module's own projections; :func:`encoder_tap` notes the padded width ``nn.TransformerEncoder`` packs
  into a nested tensor, which :func:`_unnest` restores.
- every other site: while its forward runs, :class:`_Interceptor`, a ``TorchFunctionMode``, sees its
  calls to ``F.scaled_dot_product_attention`` (weights recomputed from the same q, k, mask and scale,
  beside the fused kernel that still runs), to softmax over a ``(B, H, L, S)`` tensor (eager attention:
  the model's own weights are kept), and to ``F.multi_head_attention_forward``.

Each tap hands what it read to the capture, which computes or keeps it.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_attnviz.capture.discover import AttentionSite
from lightning_attnviz.capture.flex import FLEX_HOP
from lightning_attnviz.capture.inputs import MHAInputs, SDPAInputs, SoftmaxOutput
from lightning_attnviz.capture.kinds import WINDOW_READERS, folded_batch, folded_warning
from lightning_attnviz.capture.probe import logit_max
from lightning_attnviz.capture.readers import window_sdpa, window_softmax
from lightning_attnviz.capture.recorder import Recorder

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SOFTMAX_FUNCS = frozenset({torch.softmax, torch.Tensor.softmax, F.softmax, torch.special.softmax})
_MHA_FUNCTIONAL_SIG = inspect.signature(F.multi_head_attention_forward)
_MHA_FORWARD_SIG = inspect.signature(nn.MultiheadAttention.forward)
_ENCODER_LAYER_SIG = inspect.signature(nn.TransformerEncoderLayer.forward)


class _Interceptor(TorchFunctionMode):
    """Sees the torch calls made inside function-tap sites; always calls the original function."""

    def __init__(self, capture: Recorder) -> None:
        super().__init__()
        # A weak reference: a cycle would keep the captured maps alive until the next GC pass.
        self._capture = weakref.ref(capture)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        cap = self._capture()
        if cap is None or not cap.scope:
            return out
        site = cap.scope[-1]
        if func is FLEX_HOP and FLEX_HOP is not None:
            # FlexAttention runs its operator under Dynamo even in eager mode: only append here (Dynamo
            # replays the append with the real tensors); the capture computes it once out of the trace.
            cap.flex_calls.append((site.name, args, kwargs))
            return out
        if cap.flex_calls and not torch.compiler.is_dynamo_compiling():
            cap.record_flex()
        if func is F.scaled_dot_product_attention:
            self._sdpa(cap, site, args, kwargs, out)
        elif func in _SOFTMAX_FUNCS:
            self._softmax(cap, site, out, args, kwargs)
        elif func is F.multi_head_attention_forward:
            self._mha_functional(cap, site, args, kwargs, out)
        return out

    def _sdpa(
        self, cap: Recorder, site: AttentionSite, args: tuple, kwargs: dict, out: Any = None
    ) -> None:
        bound = {**dict(zip(_SDPA_ARGS, args, strict=False)), **kwargs}
        if site.layout.reader in WINDOW_READERS:
            return window_sdpa(cap, site, bound, out)
        q, k, mask = bound["query"], bound["key"], bound.get("attn_mask")
        if q.dim() >= 3 and folded_batch(q.shape[0], cap.call):
            cap.skip(site.name, folded_warning(site.name, q.shape[0], cap.call.batch), stacklevel=6)
            return
        if mask is not None and mask.dim() == q.dim() and mask.shape[0] > 1:
            mask = mask[: cap.samples]  # a learned bias passed as the mask may change after this step
        gqa = bool(bound.get("enable_gqa", False))
        scale = bound.get("scale")
        causal = bool(bound.get("is_causal", False))
        v = bound.get("value")
        v = v[: cap.samples].detach() if isinstance(v, Tensor) and not v.is_nested else None
        out = out[: cap.samples].detach() if isinstance(out, Tensor) and not out.is_nested else None
        if torch.compiler.is_dynamo_compiling():  # a consumer of the kernel's output changes the fusion
            v = out = None
        s = cap.samples
        inputs = SDPAInputs(
            cap.keep(q[:s]), cap.keep(k[:s]), cap.keep(mask), causal, scale, gqa, cap.keep(v), cap.keep(out)
        )
        cap.add(
            site.name,
            inputs,
            path="sdpa",
            causal=causal,
            masked=mask is not None or causal,
            gqa_groups=q.shape[-3] // k.shape[-3] if gqa and q.dim() > 3 else 1,
            scale=scale if scale is not None else q.shape[-1] ** -0.5,
            dropout_p=float(bound.get("dropout_p", 0.0)),
        )

    def _softmax(
        self, cap: Recorder, site: AttentionSite, out: Tensor, args: tuple, kwargs: dict
    ) -> None:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if not isinstance(out, Tensor) or dim not in (-1, out.dim() - 1):
            return
        logits = args[0] if args and isinstance(args[0], Tensor) else kwargs.get("input")
        if site.layout.reader in WINDOW_READERS:
            return window_softmax(cap, site, out, logits)
        if out.dim() == 3 and site.num_heads and out.shape[0] % site.num_heads == 0:
            out = out.view(-1, site.num_heads, *out.shape[-2:])  # (B·H, L, S) -> (B, H, L, S)
        if out.dim() != 4:
            return
        if folded_batch(out.shape[0], cap.call):
            cap.skip(site.name, folded_warning(site.name, out.shape[0], cap.call.batch), stacklevel=6)
            return
        kept = cap.keep(out[: cap.samples].detach())
        padded = cap.call.padded
        if padded is not None and (cap.call.encoder_decoder or padded.shape[-1] != out.shape[-2]):
            padded = None  # only a self-attention over the masked sequence has these query rows
        top = None  # the softmax's input is the logits: keep their max at finite positions, (s, H)
        if isinstance(logits, Tensor) and logits.numel() == out.numel():
            top = cap.keep(logit_max(logits.reshape(out.shape)[: cap.samples]))
        cap.add(
            site.name,
            SoftmaxOutput(kept, cap.keep(None if padded is None else padded[: cap.samples]), top),
            path="eager_softmax",
            causal=None,
            masked=None,
            gqa_groups=1,
            scale=None,
            dropout_p=0.0,
        )

    def _mha_functional(
        self, cap: Recorder, site: AttentionSite, args: tuple, kwargs: dict, out: Any = None
    ) -> None:
        b = _MHA_FUNCTIONAL_SIG.bind(*args, **kwargs).arguments
        separate = b.get("use_separate_proj_weight", False)
        record_mha(
            cap,
            site.name,
            b["query"],
            b["key"],
            num_heads=b["num_heads"],
            in_proj_weight=None if separate else b["in_proj_weight"],
            in_proj_bias=b["in_proj_bias"],
            q_proj_weight=b.get("q_proj_weight"),
            k_proj_weight=b.get("k_proj_weight"),
            bias_k=b["bias_k"],
            add_zero_attn=b["add_zero_attn"],
            key_padding_mask=b.get("key_padding_mask"),
            attn_mask=b.get("attn_mask"),
            is_causal=b.get("is_causal", False),
            dropout_p=float(b["dropout_p"]) if b.get("training", True) else 0.0,
            value=b["value"],
            v_proj_weight=b.get("v_proj_weight") if separate else None,
            bias_v=b["bias_v"],
            out_proj_weight=b["out_proj_weight"],
            out_proj_bias=b["out_proj_bias"],
            output=out[0] if isinstance(out, tuple) and out else None,
        )


def _unnest(src: Tensor, samples: int, width: int | None) -> tuple[Tensor, Tensor]:
    """Pad the first ``samples`` sequences of a nested ``(N, *, E)`` tensor; True marks padding."""
    parts = src.unbind()
    longest = max(p.shape[0] for p in parts)
    width = longest if width is None or width < longest else width
    parts = parts[:samples]
    padded = torch.stack([F.pad(p, (0, 0, 0, width - p.shape[0])) for p in parts])
    lengths = torch.tensor([p.shape[0] for p in parts], device=src.device)
    padding = torch.arange(width, device=src.device)[None, :] >= lengths[:, None]
    return padded, padding


def mha_tap(
    cap: Recorder, site: AttentionSite, mha: nn.MultiheadAttention
) -> Callable[[tuple, dict], Callable[[Any], None]]:
    """Reads the call's inputs before the forward and records it after, with the module's output
    (for the fidelity check), so the recorded call still comes in forward order."""

    def before(args: tuple, kwargs: dict) -> Callable[[Any], None]:
        cap.entered.add(site.name)
        bound = _MHA_FORWARD_SIG.bind(mha, *args, **kwargs).arguments

        def after(result: Any) -> None:
            _record_module(
                cap,
                site.name,
                mha,
                bound["query"],
                bound["key"],
                key_padding_mask=bound.get("key_padding_mask"),
                attn_mask=bound.get("attn_mask"),
                is_causal=bound.get("is_causal", False),
                batch_first=mha.batch_first,
                value=bound["value"],
                output=result[0] if isinstance(result, tuple) and result else None,
            )

        return after

    return before


def encoder_layer_tap(
    cap: Recorder, site: AttentionSite, layer: nn.TransformerEncoderLayer
) -> Callable[[tuple, dict], None]:
    def before(args: tuple, kwargs: dict) -> None:
        cap.entered.add(site.name)
        bound = _ENCODER_LAYER_SIG.bind(layer, *args, **kwargs).arguments
        src, padding = bound["src"], bound.get("src_key_padding_mask")
        batch_first = layer.self_attn.batch_first
        if src.is_nested:  # nn.TransformerEncoder's fast path packed the padded batch
            src, padding = _unnest(src, cap.samples, cap.padded_width)
        if layer.norm_first:
            norm = layer.norm1
            src = F.layer_norm(src, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        _record_module(
            cap,
            site.name,
            layer.self_attn,
            src,
            src,
            key_padding_mask=padding,
            attn_mask=bound.get("src_mask"),
            is_causal=bound.get("is_causal", False),
            batch_first=batch_first,
            self_attention=True,
            value=src,  # no output: the fused layer's output is not the attention's
        )

    return before


def encoder_tap(cap: Recorder, encoder: nn.TransformerEncoder) -> Callable[[tuple, dict], None]:
    def before(args: tuple, kwargs: dict) -> None:
        src = args[0] if args else kwargs["src"]
        batch_first = encoder.layers[0].self_attn.batch_first
        if not src.is_nested and src.dim() == 3:
            cap.padded_width = src.shape[1 if batch_first else 0]

    return before


def _record_module(
    cap: Recorder, name: str, mha: nn.MultiheadAttention, query: Tensor, key: Tensor, **kw: Any
) -> None:
    """:func:`record_mha` with the parameters of an ``nn.MultiheadAttention`` instance."""
    record_mha(
        cap,
        name,
        query,
        key,
        num_heads=mha.num_heads,
        in_proj_weight=mha.in_proj_weight if mha._qkv_same_embed_dim else None,
        in_proj_bias=mha.in_proj_bias,
        q_proj_weight=mha.q_proj_weight,
        k_proj_weight=mha.k_proj_weight,
        bias_k=mha.bias_k,
        add_zero_attn=mha.add_zero_attn,
        dropout_p=mha.dropout if mha.training else 0.0,
        v_proj_weight=mha.v_proj_weight,
        bias_v=mha.bias_v,
        out_proj_weight=mha.out_proj.weight,
        out_proj_bias=mha.out_proj.bias,
        **kw,
    )


def record_mha(
    cap: Recorder,
    name: str,
    query: Tensor,
    key: Tensor,
    *,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    bias_k: Tensor | None = None,
    add_zero_attn: bool = False,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    batch_first: bool = False,
    dropout_p: float = 0.0,
    self_attention: bool = False,
    value: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    bias_v: Tensor | None = None,
    out_proj_weight: Tensor | None = None,
    out_proj_bias: Tensor | None = None,
    output: Tensor | None = None,
) -> None:
    """Record multi-head attention from ``nn.MultiheadAttention``'s parameters (or
    ``F.multi_head_attention_forward``'s arguments); with ``self_attention``, padded query rows
    are hidden too. Separate q/k/v projections are used when ``in_proj_weight`` is ``None``. ``value``,
    the value and output projections and the ``output`` are kept for the fidelity check."""
    s = cap.samples
    if isinstance(output, Tensor) and output.is_nested:
        output = None
    if query.dim() == 3:  # keep only the sampled rows
        rows = (slice(None, s),) if batch_first else (slice(None), slice(None, s))
        query, key = query[rows], key[rows]
        value = None if value is None or value.is_nested else value[rows]
        output = None if output is None or output.dim() != 3 else output[rows]
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask[:s]
        if attn_mask is not None and attn_mask.dim() == 3:  # (N·H, L, S)
            attn_mask = attn_mask[: s * num_heads]
    embed = query.shape[-1] if in_proj_weight is None else in_proj_weight.shape[0] // 3
    if in_proj_weight is None:
        if q_proj_weight is None or k_proj_weight is None:  # as F.multi_head_attention_forward requires
            raise ValueError("`q_proj_weight` and `k_proj_weight` are needed without `in_proj_weight`")
        q_weight, k_weight, v_weight = q_proj_weight, k_proj_weight, v_proj_weight
    else:
        q_weight, k_weight = in_proj_weight[:embed], in_proj_weight[embed : 2 * embed]
        v_weight = in_proj_weight[2 * embed :]
    bias = in_proj_bias
    keep = cap.keep
    detach = _detached
    inputs = MHAInputs(
        query=keep(query),
        key=keep(key),
        num_heads=num_heads,
        q_weight=keep(q_weight),
        k_weight=keep(k_weight),
        q_bias=keep(None if bias is None else bias[:embed]),
        k_bias=keep(None if bias is None else bias[embed : 2 * embed]),
        bias_k=keep(bias_k),
        add_zero_attn=add_zero_attn,
        key_padding_mask=keep(key_padding_mask),
        attn_mask=keep(attn_mask),
        is_causal=bool(is_causal),
        batch_first=batch_first,
        hide_padded_queries=self_attention,
        value=keep(detach(value)),
        v_weight=keep(detach(v_weight)) if value is not None else None,
        v_bias=keep(detach(None if bias is None else bias[2 * embed :])) if value is not None else None,
        bias_v=keep(detach(bias_v)) if value is not None else None,
        out_weight=keep(detach(out_proj_weight)) if value is not None else None,
        out_bias=keep(detach(out_proj_bias)) if value is not None else None,
        output=keep(detach(output)),
    )
    cap.add(
        name,
        inputs,
        path="mha",
        causal=bool(is_causal),
        masked=key_padding_mask is not None or attn_mask is not None or bool(is_causal),
        gqa_groups=1,
        scale=(q_weight.shape[0] // num_heads) ** -0.5,
        dropout_p=dropout_p,
    )


def _detached(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()
