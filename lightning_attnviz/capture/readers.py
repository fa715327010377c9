"""The taps of the layouts capture reads itself (:data:`~lightning_attnviz.capture.kinds.Reader`):
windowed calls seen by the function mode, and Longformer's and BigBird's calls read around their
forward. Each hands the capture plain inputs (:mod:`~lightning_attnviz.capture.windows`,
:mod:`~lightning_attnviz.capture.banded`, :mod:`~lightning_attnviz.capture.blocksparse`), which
make the dense maps later.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_attnviz.capture.banded import BandInputs, trimmed
from lightning_attnviz.capture.blocksparse import BlockSparseInputs
from lightning_attnviz.capture.discover import AttentionSite
from lightning_attnviz.capture.recorder import Recorder
from lightning_attnviz.capture.windows import WindowCall, window_call, window_inputs

# transformers' LongformerSelfAttention or BigBirdBlockSparseAttention, read by attribute name (ints, a
# float, linear layers, a staticmethod); transformers is optional so not imported, and nn.Module's typing
# would call each of those attributes a Tensor or a Module
LayoutModule = Any


def host_tap(
    calls: dict[str, tuple[tuple, dict]], name: str
) -> Callable[[tuple, dict], Callable[[Any], object]]:
    """Keeps the call of windowed site ``name``'s block (its token grid) in ``calls`` while the block runs."""

    def before(args: tuple, kwargs: dict) -> Callable[[Any], object]:
        calls[name] = (args, kwargs)
        return lambda _: calls.pop(name, None)

    return before


def read_windows(
    cap: Recorder, site: AttentionSite, host: nn.Module, host_call: tuple[tuple, dict] | None, call: tuple
) -> None:
    """Where the windows of this ``call`` of ``site`` lie, or one warning that says why it is not drawn
    (``host_call``: the call of the block that holds the token grid, ``None`` if it did not run)."""
    reader = site.layout.reader or ""
    found = "its block was not called" if host_call is None else window_call(reader, host, host_call, call)
    if isinstance(found, WindowCall):
        cap.windows[site.name] = found
    else:
        message = f"Attention in {site.name!r} is not captured: {found}; no map is drawn."
        cap.skip(site.name, message, stacklevel=6)


def window_sdpa(cap: Recorder, site: AttentionSite, bound: dict, out: Any) -> None:
    """A windowed site's fused call: q, k and mask of the sampled images' windows (and v and the
    kernel's output, for the fidelity check), placed back on the tokens when computed."""
    call = cap.windows.get(site.name)
    if call is None:  # the call did not fit its layout: declared when it was read
        return
    v, kernel = bound.get("value"), out
    if torch.compiler.is_dynamo_compiling():  # a consumer of the kernel's output changes the fusion
        v = kernel = None
    q, scale, mask = bound["query"], bound.get("scale"), bound.get("attn_mask")
    kernel = kernel if isinstance(kernel, Tensor) else None
    k = bound["key"]
    inputs = window_inputs(call, cap.samples, cap.keep, q=q, k=k, mask=mask, scale=scale, v=v, out=kernel)
    cap.add(
        site.name,
        inputs,
        path="sdpa",
        causal=False,
        masked=True,
        gqa_groups=1,
        scale=scale if scale is not None else q.shape[-1] ** -0.5,
        dropout_p=float(bound.get("dropout_p", 0.0)),
    )


def window_softmax(cap: Recorder, site: AttentionSite, out: Tensor, logits: Any) -> None:
    """A windowed site's eager softmax: the model's own weights of the sampled images' windows."""
    call = cap.windows.get(site.name)
    size = call.geometry.size if call is not None else -1
    if call is None or out.dim() != (5 if call.split else 4) or tuple(out.shape[-2:]) != (size, size):
        return
    inputs = window_inputs(call, cap.samples, cap.keep, weights=out, logits=logits)
    meta = dict(causal=None, masked=True, gqa_groups=1, scale=None, dropout_p=0.0)
    cap.add(site.name, inputs, path="eager_softmax", **meta)


def band_tap(cap: Recorder, site: AttentionSite, module: LayoutModule) -> Callable[[tuple, dict], Any]:
    """Reads a Longformer call (hidden states, padding and global tokens) before it runs and records it
    after, with its output, projecting the sampled rows with the module's own linear layers."""
    try:
        signature: inspect.Signature | None = inspect.signature(module.forward)
    except (TypeError, ValueError):
        signature = None

    def before(args: tuple, kwargs: dict) -> Callable[[Any], None]:
        cap.entered.add(site.name)
        bound = _bind(signature, args, kwargs)

        def after(result: Any) -> None:
            hidden, masked = bound.get("hidden_states"), bound.get("is_index_masked")
            is_global = bound.get("is_index_global_attn")
            if not (
                isinstance(hidden, Tensor) and isinstance(masked, Tensor) and isinstance(is_global, Tensor)
            ):
                return cap.skip(site.name, _unreadable(site.name), stacklevel=6)
            output = result[0] if isinstance(result, tuple) and result else None
            cap.add(
                site.name,
                _band_inputs(cap, module, hidden, masked, is_global, output),
                path="banded",
                causal=False,
                masked=True,
                gqa_groups=1,
                scale=float(module.head_dim) ** -0.5,
                dropout_p=float(module.dropout) if module.training else 0.0,
            )

        return after

    return before


def _band_inputs(
    cap: Recorder, module: LayoutModule, hidden: Tensor, masked: Tensor, is_global: Tensor, output: Any
) -> BandInputs:
    s, heads = cap.samples, module.num_heads
    h = hidden[:s].detach()  # (s, L, E)

    def project(linear: nn.Module, scale: float = 1.0) -> Tensor:
        with torch.no_grad():
            t = linear(h) * scale
        return cap.keep(t.view(*t.shape[:2], heads, -1).transpose(1, 2))  # (s, H, L, hd)

    root = 1.0 / math.sqrt(module.head_dim)
    masked, is_global = masked[:s].detach().bool(), is_global[:s].detach().bool()
    return BandInputs(
        q=project(module.query, root),
        k=project(module.key),
        q_global=project(module.query_global, root),
        k_global=project(module.key_global),
        masked=cap.keep(masked),
        is_global=cap.keep(is_global),
        window=int(module.one_sided_attn_window_size),
        length=trimmed(cap.call.length, masked),
        v=project(module.value),
        v_global=project(module.value_global),
        output=cap.keep(output[:s].detach()) if isinstance(output, Tensor) else None,
    )


def _bind(signature: inspect.Signature | None, args: tuple, kwargs: dict) -> dict[str, Any]:
    if signature is None:
        return dict(kwargs)
    try:
        return dict(signature.bind_partial(*args, **kwargs).arguments)
    except TypeError:
        return dict(kwargs)


def _unreadable(name: str) -> str:
    return (
        f"Attention in {name!r} is not captured: its call does not give the hidden states, padding and "
        "global tokens Longformer's self-attention takes; no map is drawn."
    )


def block_sparse_taps(
    cap: Recorder, site: AttentionSite, module: LayoutModule
) -> tuple[Callable[[tuple, dict], Any], Callable[[Tensor, Tensor], Tensor]]:
    """The tap of a BigBird block-sparse call, and the instance's ``torch_gather_b2`` that notes the
    random blocks the kernel gathers (its own function still does the gathering)."""
    gather = module.torch_gather_b2  # a staticmethod: the plain function
    signature = inspect.signature(module.forward)
    drawn: list[Tensor] = []

    def noting_gather(params: Tensor, indices: Tensor) -> Tensor:
        if not drawn:  # keys, then values, with the same indices
            drawn.append(indices[: cap.samples].detach())
        return gather(params, indices)

    def before(args: tuple, kwargs: dict) -> Callable[[Any], None]:
        cap.entered.add(site.name)
        drawn.clear()
        bound = signature.bind_partial(*args, **kwargs).arguments

        def after(result: Any) -> None:
            hidden = bound.get("hidden_states")
            if not drawn or not isinstance(hidden, Tensor):
                message = (
                    f"Attention in {site.name!r} is not captured: its call gathered no random blocks "
                    "(not the block-sparse kernel it was found with); no map is drawn."
                )
                return cap.skip(site.name, message, stacklevel=6)
            output = result[0] if isinstance(result, tuple) and result else None
            inputs = _block_inputs(cap, module, hidden, bound, drawn[0], output)
            drawn.clear()
            scale = float(module.attention_head_size) ** -0.5
            meta = dict(causal=False, masked=True, gqa_groups=1, scale=scale, dropout_p=0.0)
            cap.add(site.name, inputs, path="block_sparse", **meta)

        return after

    return before, noting_gather


def _block_inputs(
    cap: Recorder, module: LayoutModule, hidden: Tensor, bound: dict, rand: Tensor, output: Any
) -> BlockSparseInputs:
    s, heads = cap.samples, module.num_attention_heads
    h = hidden[:s].detach()

    def project(linear: nn.Module) -> Tensor:
        with torch.no_grad():
            t = linear(h)
        return cap.keep(t.view(*t.shape[:2], heads, -1).transpose(1, 2))  # (s, H, L, hd)

    def padded(mask: Any, dims: tuple[int, int]) -> Tensor:  # BigBird's masks: 1 keeps, 0 pads
        if not isinstance(mask, Tensor):
            return torch.zeros(h.shape[:2], dtype=torch.bool)
        return mask[:s].detach().squeeze(dims[1]).squeeze(dims[0]).eq(0).cpu()

    key_padded = padded(bound.get("to_mask"), (1, 2))  # (B, 1, 1, L) -> (s, L)
    query_padded = padded(bound.get("from_mask"), (1, 3))  # (B, 1, L, 1) -> (s, L)
    return BlockSparseInputs(
        q=project(module.query),
        k=project(module.key),
        rand=cap.keep(rand),
        block=int(module.block_size),
        key_padded=key_padded,
        query_padded=query_padded,
        length=trimmed(cap.call.length, key_padded),
        v=project(module.value),
        output=cap.keep(output[:s].detach()) if isinstance(output, Tensor) else None,
    )
