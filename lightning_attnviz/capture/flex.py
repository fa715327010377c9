"""FlexAttention's weights: the model's own ``score_mod`` and ``block_mask`` applied to recomputed scores.

``torch.nn.attention.flex_attention.flex_attention`` never hands its weights to anyone: eager or
compiled, it calls the ``flex_attention`` higher-order operator inside a ``torch.compile`` region. The
capture's function mode sees that operator call (while Dynamo traces it, so the tap only *appends* the
call's arguments; Dynamo replays the append with the real tensors), and :func:`flex_scores` then
rebuilds, for the sampled rows only, exactly what the operator's reference implementation does:

    scores = q·kᵀ · scale                     (float32, float64 for float64 inputs)
    scores = score_mod(scores, b, h, q_idx, kv_idx)    vmapped over b, h, q_idx, kv_idx
    scores = -inf where the block mask hides a position

Hidden positions are those ``mask_mod`` rejects inside partial blocks, and every position of a block the
mask does not list (the fused kernel skips those blocks; full blocks skip ``mask_mod``). The result is
kept as scores, not weights: ``score_mod`` is a closure that cannot travel to the drawing process, the
scores can, and :func:`~lightning_attnviz.capture.weights.scores_weights` softmaxes them there.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

try:  # the operator FlexAttention calls; absent from old PyTorch builds
    from torch._higher_order_ops.flex_attention import flex_attention as FLEX_HOP
except ImportError:  # pragma: no cover - PyTorch without FlexAttention
    FLEX_HOP = None  # type: ignore[assignment]

__all__ = ["FLEX_HOP", "flex_scores"]

# Arguments of the operator: query, key, value, score_mod, block_mask (BlockMask.as_tuple()), scale,
# kernel_options, score_mod_other_buffers, mask_mod_other_buffers.
_BUFFER_ARGS = ("score_mod_other_buffers", "mask_mod_other_buffers")


def flex_scores(args: tuple, kwargs: dict[str, Any], samples: int) -> Tensor:
    """Post-``score_mod``, block-masked scores of one FlexAttention call, first ``samples`` rows.

    Args:
        args, kwargs: the arguments of the ``flex_attention`` operator call.
        samples: leading batch rows to compute.

    Returns:
        float32 (float64 for float64 inputs) detached scores, ``-inf`` where the mask hides a key.

    Shape:
        query ``(B, Hq, L, E)``, key ``(B | 1, Hkv, S, E)`` → scores ``(samples, Hq, L, S)``.
    """
    names = ("query", "key", "value", "score_mod", "block_mask", "scale", "kernel_options", *_BUFFER_ARGS)
    bound = {**dict(zip(names, args, strict=False)), **kwargs}
    query, key = bound["query"].detach(), bound["key"].detach()
    score_mod: Callable = bound["score_mod"]
    block = tuple(bound["block_mask"])
    score_buffers = tuple(bound.get("score_mod_other_buffers") or ())
    mask_buffers = tuple(bound.get("mask_mod_other_buffers") or ())
    s = min(samples, query.shape[0])
    precision = torch.float64 if query.dtype == torch.float64 else torch.float32
    q = query[:s].to(precision)
    k = key[:s] if key.shape[0] > 1 else key.expand(s, *key.shape[1:])
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1).to(precision)  # GQA: a key head per group
    with torch.autocast(q.device.type, enabled=False), torch.no_grad():
        scores = (q @ k.transpose(-2, -1)) * float(bound["scale"])  # (s, Hq, L, S)
        b, h, m, n = (torch.arange(size, device=q.device) for size in scores.shape)
        with _getitem_as_index():
            modded = _vmap_bhqkv(score_mod, True, len(score_buffers))(scores, b, h, m, n, *score_buffers)
            allowed = _vmap_bhqkv(block[-1], False, len(mask_buffers))(b, h, m, n, *mask_buffers)
        allowed = allowed.to(torch.bool) & _block_coverage(block, scores.shape, s)
        return modded.to(precision).masked_fill(~allowed, float("-inf"))


def _vmap_bhqkv(fn: Callable, scores: bool, buffers: int) -> Callable:
    """``fn`` mapped over b, h, q_idx, kv_idx as FlexAttention maps its mods (kv_idx innermost); with
    ``scores`` the first argument is mapped along each of them too. Buffers are passed whole."""
    prefix = (0,) if scores else ()
    for dims in ((None, None, None, 0), (None, None, 0, None), (None, 0, None, None), (0, None, None, None)):
        fn = torch.vmap(fn, in_dims=(*prefix, *dims, *(None,) * buffers), out_dims=0)
    return fn


def _block_coverage(block: tuple, shape: torch.Size, samples: int) -> Tensor:
    """Bool ``(s | 1, H | 1, L, S)``: True inside blocks the block mask lists (partial or full)."""
    kv_num, kv_idx, full_num, full_idx = block[2], block[3], block[4], block[5]
    q_block, kv_block = int(block[-3]), int(block[-2])
    length, width = shape[-2], shape[-1]
    covered = _listed(kv_num, kv_idx, -(-width // kv_block))
    if full_num is not None and full_idx is not None:
        covered = covered | _listed(full_num, full_idx, -(-width // kv_block))
    if covered.shape[0] > 1:
        covered = covered[:samples]
    rows = covered.repeat_interleave(q_block, dim=-2)[..., :length, :]
    cells = rows.repeat_interleave(kv_block, dim=-1)[..., :width]
    if cells.shape[-2] < length:  # a block mask made for a shorter query: nothing beyond it is listed
        cells = torch.nn.functional.pad(cells, (0, 0, 0, length - cells.shape[-2]))
    return cells


def _listed(num: Tensor, idx: Tensor, kv_blocks: int) -> Tensor:
    """``(B, H, Qb, KVb)`` bool from the first ``num`` entries of each row of block indices."""
    used = torch.arange(idx.shape[-1], device=idx.device) < num[..., None]  # (B, H, Qb, slots)
    width = max(kv_blocks, idx.shape[-1])
    hits = torch.zeros(*idx.shape[:-1], width, dtype=torch.int32, device=idx.device)
    hits.scatter_add_(-1, idx.long().clamp(0, width - 1), used.to(torch.int32))
    return (hits > 0)[..., :kv_blocks]


def _getitem_as_index() -> Any:
    """FlexAttention's own context that lets a mod index a tensor with a 0-d index tensor."""
    try:
        from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex
    except ImportError:  # pragma: no cover - older PyTorch
        return nullcontext()
    return TransformGetItemToIndex()
