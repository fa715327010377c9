"""Gradient-weighted relevance (Chefer et al. 2021, "Generic Attention-model Explainability"), opt-in.

Raw attention says where a head looks, not what the prediction depends on. Chefer et al. weight each
map by its gradient: per layer ``Ā = mean over heads of (∇A ⊙ A)⁺`` and, through the layers in forward
order, ``R ← R + Ā·R`` from ``R = I``. Row ``r`` of ``R`` is the relevance of each token for the target
read at position ``r``.

The target (documented, and what the picture's note says):

- ``relevance_target=fn``: ``fn(output) -> Tensor`` (a scalar, or one value per sample; summed).
- otherwise the model's logits (the output itself, its ``.logits`` or ``["logits"]``, or its first
  tensor): ``(N, C)`` → the predicted class's logit, explained at row 0 (the CLS token);
  ``(N, L, V)`` → the predicted next token's logit at the last position, explained at row ``L − 1``.

It runs on the training thread at capture time, as a separate forward and backward on the fixed
samples, with the model in eval mode and random streams forked; modes are restored whatever happens.
Gradients are taken with ``torch.autograd.grad`` with respect to the attention maps only, so no
parameter's ``.grad`` is touched and the optimizer sees nothing. Fused SDPA is replaced *for this pass
only* by an eager ``softmax(q·kᵀ·scale + mask)·v`` whose ``A`` is in the graph; eager attention's own
softmax output is used as is. ``nn.MultiheadAttention`` is not supported (its weights never reach the
graph as a tensor one can differentiate against); such layers are left out and named in a warning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_attnviz.capture.discover import AttentionSite, named_modules
from lightning_attnviz.capture.forward import install_forward
from lightning_attnviz.capture.function_mode import FunctionMode

_SOFTMAX_FUNCS = frozenset({torch.softmax, torch.Tensor.softmax, F.softmax, torch.special.softmax})
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@dataclass(frozen=True)
class RelevanceMap:
    """The relevance of one fixed sample (plain data, for the drawing process).

    Attributes:
        sample: index of the fixed sample.
        matrix: ``(L, L)`` float32 ``R``.
        row: the row of ``R`` that explains the target.
        layers: the layers that entered ``R``, in forward order.
        target: what was explained, in words.
        seconds: wall time of the pass on the training thread (all samples).
    """

    sample: int
    matrix: np.ndarray
    row: int
    layers: tuple[str, ...]
    target: str
    seconds: float = 0.0


def chefer_relevance(maps: list[Tensor], grads: list[Tensor]) -> Tensor:
    """``R = I``, then per layer ``R ← R + Ā·R`` with ``Ā = mean_h (∇A ⊙ A)⁺``.

    Shape:
        maps, grads: per layer ``(s, H, L, L)``; returns ``(s, L, L)``.
    """
    s, _, length, _ = maps[0].shape
    r = torch.eye(length, dtype=torch.float64).expand(s, length, length).clone()
    for a, g in zip(maps, grads, strict=True):
        cam = (g.double() * a.double()).clamp_min(0).mean(dim=1)  # (s, L, L)
        r = r + cam @ r
    return r


class _Mode(FunctionMode):
    """While a site's forward runs: SDPA computed eagerly with ``A`` in the graph, softmax outputs kept."""

    def __init__(self) -> None:
        super().__init__()
        self.scope: list[AttentionSite] = []
        self.maps: list[tuple[str, Tensor, int]] = []  # (site, A as produced, heads to view it with)

    def on_call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not self.scope:
            return func(*args, **kwargs)
        site = self.scope[-1]
        if func is F.scaled_dot_product_attention:
            return self._sdpa(site, {**dict(zip(_SDPA_ARGS, args, strict=False)), **kwargs})
        out = func(*args, **kwargs)
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if func in _SOFTMAX_FUNCS and isinstance(out, Tensor) and dim in (-1, out.dim() - 1):
            heads = out.shape[1] if out.dim() == 4 else (site.num_heads or 0)
            if out.dim() == 4 or (out.dim() == 3 and heads and out.shape[0] % heads == 0):
                if not out.requires_grad:  # a frozen model: the map itself is what we differentiate
                    out = out.detach().requires_grad_()
                self.maps.append((site.name, out, heads))
        return out

    def _sdpa(self, site: AttentionSite, b: dict[str, Any]) -> Tensor:
        q, k, v, mask = b["query"], b["key"], b["value"], b.get("attn_mask")
        if b.get("enable_gqa") and k.shape[-3] != q.shape[-3]:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
        scale = b.get("scale") or 1.0 / math.sqrt(q.shape[-1])
        with torch.autocast(q.device.type, enabled=False):
            scores = (q.float() @ k.float().transpose(-2, -1)) * scale
            length, width = scores.shape[-2:]
            if b.get("is_causal"):
                tri = torch.ones(length, width, dtype=torch.bool, device=q.device).tril()
                scores = scores.masked_fill(~tri, float("-inf"))
            if mask is not None:
                hide = ~mask if mask.dtype == torch.bool else None
                scores = (
                    scores.masked_fill(hide, float("-inf")) if hide is not None else scores + mask.float()
                )
            a = scores.softmax(-1).nan_to_num(0.0)  # a row with no visible key: zero weight
            if not a.requires_grad:
                a = a.detach().requires_grad_()
            self.maps.append((site.name, a, a.shape[1] if a.dim() == 4 else 1))
            return (a @ v.float()).to(v.dtype)


@contextmanager
def _taps(model: nn.Module, sites: list[AttentionSite]) -> Iterator[tuple[_Mode, list[str]]]:
    """The mode, on while each supported site's forward runs; per-instance wrappers always removed."""
    mode, restore, skipped = _Mode(), [], []
    named = named_modules(model)
    try:
        for site in sites:
            module = named.get(site.name)
            if module is None or not site.layout.dense:  # windows, bands, blocks: not one softmax
                continue
            if site.tap != "function" or isinstance(module, nn.MultiheadAttention):
                skipped.append(site.name)
                continue
            original = module.forward

            def forward(*args: Any, _site: AttentionSite = site, _orig: Any = original, **kwargs: Any) -> Any:
                mode.scope.append(_site)
                try:
                    if len(mode.scope) == 1:
                        with mode:
                            return _orig(*args, **kwargs)
                    return _orig(*args, **kwargs)
                finally:
                    mode.scope.pop()

            restore.append(install_forward(module, forward, tap=False))
        yield mode, skipped
    finally:
        for undo in reversed(restore):
            undo()


def logits_of(output: Any) -> Tensor:
    """The logits in a model's output: itself, ``.logits``, ``["logits"]``, or its first tensor."""
    if isinstance(output, Tensor):
        return output
    found = getattr(output, "logits", None)
    if found is None and isinstance(output, dict):
        found = output.get("logits")
    if found is None and isinstance(output, (tuple, list)):
        found = next((t for t in output if isinstance(t, Tensor)), None)
    if not isinstance(found, Tensor):
        raise TypeError(
            f"no logits in the model's output ({type(output).__name__}); pass `relevance_target=`"
        )
    return found


def default_target(output: Any) -> tuple[Tensor, int | None, str]:
    """``(target, row, words)``: the predicted class (row 0) or the predicted next token (last row)."""
    logits = logits_of(output)
    if logits.dim() == 2:
        return logits.gather(1, logits.argmax(1, keepdim=True)).sum(), 0, "the predicted class's logit"
    if logits.dim() == 3:
        last = logits[:, -1]
        target = last.gather(1, last.argmax(1, keepdim=True)).sum()
        return target, logits.shape[1] - 1, "the predicted next token's logit at the last position"
    raise ValueError(f"logits of shape {tuple(logits.shape)} are neither (N, C) nor (N, L, V)")


def relevance_pass(
    model: nn.Module,
    inputs: Any,
    forward: Callable[[Any, Any], Any],
    sites: list[AttentionSite],
    target_fn: Callable[[Any], Tensor] | None = None,
    context: Callable[[], Any] | None = None,
) -> tuple[list[RelevanceMap], list[str]]:
    """Relevance of every sample in ``inputs``; see the module docstring. Returns the maps and the
    names of layers left out (``nn.MultiheadAttention``).

    Raises:
        Exception: whatever the user's forward or target raised (the caller turns it into a warning).
    """
    start = time.perf_counter()
    modes = {m: m.training for m in model.modules()}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        model.eval()
        with torch.random.fork_rng(devices=rng_devices), torch.inference_mode(False), torch.enable_grad():
            inputs = _fresh(inputs)  # tensors made under inference_mode cannot enter autograd
            with _taps(model, sites) as (mode, skipped), context() if context else nullcontext():
                output = forward(model, inputs)
            if target_fn is not None:
                target, row, words = target_fn(output).sum(), None, "the user's relevance_target"
                logits = logits_of(output)
                row = 0 if logits.dim() == 2 else logits.shape[1] - 1
            else:
                target, row, words = default_target(output)
            maps = _square_chain(mode.maps)
            if not maps:
                return [], skipped
            grads = torch.autograd.grad(target, [a for _, a, _ in maps], allow_unused=True)
    finally:
        for module, training in modes.items():
            module.training = training
    views = [_as_heads(a, h) for _, a, h in maps]
    grads4 = [
        torch.zeros_like(v) if g is None else _as_heads(g, h)
        for g, v, (_, _, h) in zip(grads, views, maps, strict=True)
    ]
    r = chefer_relevance([v.detach().cpu() for v in views], [g.detach().cpu() for g in grads4])
    seconds = time.perf_counter() - start
    names = tuple(name for name, _, _ in maps)
    row = r.shape[-1] - 1 if row is None else row
    return [
        RelevanceMap(i, r[i].float().numpy(), row, names, words, seconds) for i in range(r.shape[0])
    ], skipped


def _as_heads(t: Tensor, heads: int) -> Tensor:
    return t if t.dim() == 4 else t.reshape(-1, heads, *t.shape[-2:])


def _square_chain(maps: list[tuple[str, Tensor, int]]) -> list[tuple[str, Tensor, int]]:
    """The self-attention maps on the first map's tokens (square, same length), in forward order."""
    square = [m for m in maps if m[1].shape[-1] == m[1].shape[-2]]
    if not square:
        return []
    length = square[0][1].shape[-1]
    return [m for m in square if m[1].shape[-1] == length]


def _fresh(batch: Any) -> Any:
    from lightning_utilities.core.apply_func import apply_to_collection

    return apply_to_collection(batch, Tensor, lambda t: t.clone())


def relevance_job(
    trainer: Any,
    pl_module: nn.Module,
    fixed: Any,
    forward: Callable[[Any, Any], Any],
    config: Any,
    sites: list[AttentionSite],
    warn_once: Callable[[str, str], None],
) -> tuple[RelevanceMap, ...]:
    """:func:`relevance_pass` on the fixed samples with the trainer's device and precision; a failure
    costs the relevance pictures (one warning), never the capture or training."""
    from lightning_attnviz.util import lightning as lit

    precision = trainer.precision_plugin
    try:
        inputs = precision.convert_input(lit.to_device(fixed, pl_module.device))
        target_fn = config.relevance_target
        maps, skipped = relevance_pass(
            pl_module, inputs, forward, sites, target_fn, precision.forward_context
        )
    except Exception as err:  # the user's training goes on; the relevance pass is reported, not raised
        warn_once(
            "relevance",
            f"AttentionMonitor: the relevance pass failed ({type(err).__name__}: {err}); no relevance is "
            "drawn. Check `relevance_target` against your model's output.",
        )
        return ()
    if skipped:
        warn_once(
            "relevance_mha",
            f"AttentionMonitor: relevance leaves out {skipped}: nn.MultiheadAttention's weights are not a "
            "tensor the relevance pass can differentiate against.",
        )
    if not maps:
        warn_once("relevance_none", "AttentionMonitor: the relevance pass found no attention map to explain.")
    return tuple(maps)
