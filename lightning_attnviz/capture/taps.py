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
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_attnviz.capture.discover import AttentionSite
from lightning_attnviz.capture.flex import FLEX_HOP
from lightning_attnviz.capture.function_mode import FunctionMode
from lightning_attnviz.capture.inputs import SDPAInputs, SoftmaxOutput
from lightning_attnviz.capture.kinds import WINDOW_READERS, folded_batch, folded_warning
from lightning_attnviz.capture.mha import MHACall, MHAParams, project
from lightning_attnviz.capture.probe import logit_max
from lightning_attnviz.capture.readers import window_sdpa, window_softmax
from lightning_attnviz.capture.recorder import Recorder

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SOFTMAX_FUNCS = frozenset({torch.softmax, torch.Tensor.softmax, F.softmax, torch.special.softmax})
_PRODUCT_FUNCS = frozenset(
    {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}
)
_MHA_FUNCTIONAL_SIG = inspect.signature(F.multi_head_attention_forward)
_DROPOUT_SIG = inspect.signature(F.dropout)
_MHA_FORWARD_SIG = inspect.signature(nn.MultiheadAttention.forward)
_ENCODER_LAYER_SIG = inspect.signature(nn.TransformerEncoderLayer.forward)


class _Interceptor(FunctionMode):
    """Sees the torch calls made inside function-tap sites; always calls the original function."""

    def __init__(self, capture: Recorder) -> None:
        super().__init__()
        # A weak reference: a cycle would keep the captured maps alive until the next GC pass.
        self._capture = weakref.ref(capture)

    def on_call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
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
        elif func in _PRODUCT_FUNCS or func is F.dropout:
            self._product(cap, site, func, args, kwargs, out)
        return out

    def _product(
        self, cap: Recorder, site: AttentionSite, func: Any, args: tuple, kwargs: dict, out: Any
    ) -> None:
        """The first ``weights @ values`` after an eager softmax, in the same site: its operands and
        result are the fidelity check's (a train-mode dropout in between makes it random: not checked)."""
        shape = cap.held_shape(site.name)
        weights = args[0] if args else kwargs.get("input")
        if shape is None or not isinstance(weights, Tensor) or weights.numel() != shape.numel():
            return
        if weights.shape[-2:] != shape[-2:]:
            return
        if func is F.dropout:
            b = _DROPOUT_SIG.bind(*args, **kwargs).arguments
            if b.get("training", True) and b.get("p", 0.5) > 0:
                cap.complete(None, None)
            return
        values = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
        compiling = torch.compiler.is_dynamo_compiling()  # a consumer of the product changes the fusion
        if compiling or not isinstance(values, Tensor) or not isinstance(out, Tensor):
            return cap.complete(None, None)
        if values.dim() != weights.dim() or values.shape[-2] != shape[-1]:
            return cap.complete(None, None)
        s, heads = cap.samples, shape[1] if len(shape) == 4 else 1
        four = (shape[0], heads, *values.shape[-2:]), (shape[0], heads, *out.shape[-2:])
        try:
            v, product = values.reshape(four[0])[:s], out.reshape(four[1])[:s]
        except RuntimeError:  # not this attention's product
            return cap.complete(None, None)
        cap.complete(cap.keep(v.detach()), cap.keep(product.detach()))

    def _sdpa(self, cap: Recorder, site: AttentionSite, args: tuple, kwargs: dict, out: Any = None) -> None:
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

    def _softmax(self, cap: Recorder, site: AttentionSite, out: Tensor, args: tuple, kwargs: dict) -> None:
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
        cap.hold(  # recorded at the product that follows, or when the site returns without one
            site.name,
            SoftmaxOutput(kept, cap.keep(None if padded is None else padded[: cap.samples]), top),
            out.shape,
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
        call = _bound_call(b, out)
        dropout = float(b["dropout_p"]) if b.get("training", True) else 0.0
        record_mha(cap, site.name, MHAParams.functional(b), call, dropout)


def _bound_call(bound: dict[str, Any], result: Any, batch_first: bool = False) -> MHACall:
    """The call ``F.multi_head_attention_forward`` or ``nn.MultiheadAttention.forward`` was given (their
    arguments share names), with the attention output: the first of the ``result`` they returned."""
    return MHACall(
        bound["query"],
        bound["key"],
        bound["value"],
        key_padding_mask=bound.get("key_padding_mask"),
        attn_mask=bound.get("attn_mask"),
        is_causal=bound.get("is_causal", False),
        batch_first=batch_first,
        output=result[0] if isinstance(result, tuple) and result else None,
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
            call = _bound_call(bound, result, batch_first=mha.batch_first)
            record_mha(cap, site.name, MHAParams.of(mha), call, mha.dropout if mha.training else 0.0)

        return after

    return before


def encoder_layer_tap(
    cap: Recorder, site: AttentionSite, layer: nn.TransformerEncoderLayer
) -> Callable[[tuple, dict], None]:
    def before(args: tuple, kwargs: dict) -> None:
        cap.entered.add(site.name)
        bound = _ENCODER_LAYER_SIG.bind(layer, *args, **kwargs).arguments
        src, padding = bound["src"], bound.get("src_key_padding_mask")
        if src.is_nested:  # nn.TransformerEncoder's fast path packed the padded batch
            src, padding = _unnest(src, cap.samples, cap.padded_width)
        if layer.norm_first:
            norm = layer.norm1
            src = F.layer_norm(src, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        mha = layer.self_attn
        call = MHACall(
            src,
            src,
            src,  # no output: the fused layer's output is not the attention's
            key_padding_mask=padding,
            attn_mask=bound.get("src_mask"),
            is_causal=bound.get("is_causal", False),
            batch_first=mha.batch_first,
            self_attention=True,
        )
        record_mha(cap, site.name, MHAParams.of(mha), call, mha.dropout if mha.training else 0.0)

    return before


def encoder_tap(cap: Recorder, encoder: nn.TransformerEncoder) -> Callable[[tuple, dict], None]:
    def before(args: tuple, kwargs: dict) -> None:
        src = args[0] if args else kwargs["src"]
        batch_first = encoder.layers[0].self_attn.batch_first
        if not src.is_nested and src.dim() == 3:
            cap.padded_width = src.shape[1 if batch_first else 0]

    return before


def record_mha(cap: Recorder, name: str, params: MHAParams, call: MHACall, dropout_p: float) -> None:
    """Record one multi-head attention call: the sampled rows projected with ``params`` on the call's
    device (never the projection weights), kept as the capture keeps everything."""
    inputs = project(params, call, cap.samples)
    tensors = {f.name: getattr(inputs, f.name) for f in fields(inputs)}
    kept: dict[str, Any] = {name: cap.keep(t) for name, t in tensors.items() if isinstance(t, Tensor)}
    cap.add(
        name,
        replace(inputs, **kept),
        path="mha",
        causal=bool(call.is_causal),
        masked=call.key_padding_mask is not None or call.attn_mask is not None or bool(call.is_causal),
        gqa_groups=1,
        scale=(inputs.q.shape[-1] // params.num_heads) ** -0.5,
        dropout_p=dropout_p,
    )
