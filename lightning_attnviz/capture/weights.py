"""Attention weights A = softmax(QKᵀ·scale + mask), recomputed beside the user's own kernel.

These functions never run the model's attention: they take the q/k (or the scores) the
model used and compute A for the first few batch rows only, in float32, in chunks of query rows, so
that memory stays O(samples·H·chunk·S) while computing and the user's fused kernel keeps running.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_attnviz.capture.heads import batch_dims_to_heads
from lightning_attnviz.capture.pooling import EXACT, Computed, Storage, _Collector
from lightning_attnviz.capture.probe import Probe

# Scores alive at once while computing: samples·heads·rows·keys ≤ this many float32 values (4 MiB),
# small enough to stay in cache between the matmul, the mask and the softmax (fastest measured here).
_CHUNK_ELEMENTS = 1 << 20


def _slice_mask(mask: Tensor, ndim: int, samples: int) -> Tensor:
    """Broadcast ``mask`` to ``ndim`` dims and keep its first ``samples`` batch rows."""
    while mask.dim() < ndim:
        mask = mask.unsqueeze(0)
    if mask.shape[0] > 1:
        mask = mask[:samples]
    return batch_dims_to_heads(mask) if ndim != 4 else mask


def sdpa_weights(
    query: Tensor,
    key: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    samples: int = 1,
    storage: Storage = EXACT,
    probe: Probe | None = None,
) -> Computed:
    """The weights ``F.scaled_dot_product_attention`` applies, for the first ``samples`` batch rows.

    Follows SDPA's documented semantics: a bool ``attn_mask`` marks positions that *may* be attended,
    a float one is added to the scores, ``is_causal`` is the top-left aligned lower triangle, and
    ``enable_gqa`` repeats each key head for ``Hq // Hk`` query heads. Rows where every key is masked
    get zero weight (SDPA's output there is undefined).

    Returns:
        :class:`Computed`: float32 CPU weights (block-pooled beyond ``max_tokens``), the bool mask of
        attendable positions (``None`` when nothing was masked) and, with ``stats``, row statistics.

    Shape:
        - query: ``(N, ..., Hq, L, E)``; key: ``(N, ..., Hk, S, E)``.
        - weights: ``(samples, Hq, L, S)`` unpooled; visible: broadcastable to it.
    """
    ndim = query.dim()
    q = batch_dims_to_heads(query[:samples].detach())
    k = batch_dims_to_heads(key[:samples].detach())
    if enable_gqa and k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    bias = None  # additive float32 mask, (1|s, 1|H, L, S)
    visible = None
    if attn_mask is not None:
        mask = _slice_mask(attn_mask.detach(), ndim, samples)
        if mask.dtype == torch.bool:
            visible = mask
        else:
            bias = mask.float()
    return _softmax_in_chunks(q, k, scale, bias, visible, is_causal, None, storage, probe)


def _softmax_in_chunks(
    q: Tensor,
    k: Tensor,
    scale: float,
    bias: Tensor | None,
    visible: Tensor | None,
    causal: bool = False,
    hidden_rows: Tensor | None = None,
    storage: Storage = EXACT,
    probe: Probe | None = None,
) -> Computed:
    """softmax(q kᵀ · scale + bias) over keys, with ``visible``, ``causal`` and ``hidden_rows`` applied,
    a block of rows at a time.

    Blocks of about 4 MiB keep the intermediates in cache, so the cost is close to one write of the
    result; with ``causal`` only the keys left of the block's last row are computed. ``hidden_rows``
    (``(s, q)`` bool) marks query rows that get no weight (padded queries). ``probe`` reads each block's
    scores (the logits, ``-inf`` where hidden) and weights: the max logit and fidelity come for free.
    """
    samples, heads, length, _ = q.shape
    width = k.shape[-2]
    collector = _Collector(samples, heads, length, width, storage, q.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, samples * heads * width))
    kt = k.float().transpose(-2, -1)
    masked = visible is not None or bias is not None or causal or hidden_rows is not None
    # causal alone never leaves a row without keys (row i sees keys 0..i); other masks may
    may_empty = visible is not None or bias is not None or hidden_rows is not None
    with torch.autocast(q.device.type, enabled=False):
        for start in range(0, length, rows):
            stop = min(length, start + rows)
            # keys right of the block's last row are all masked under `causal`: computed as zeros later
            keys = min(width, stop) if causal else width
            scores = (q[..., start:stop, :].float() * scale) @ kt[..., :keys]  # (s, H, rows, keys)
            if bias is not None:
                scores += _rows(bias, start, stop)[..., :keys]
            allowed = _allowed(visible, causal, hidden_rows, start, stop, keys, q.device)
            if allowed is not None:
                scores.masked_fill_(~allowed, float("-inf"))
            if bias is not None:  # a float mask can hide positions too
                allowed = ~torch.isneginf(scores)
            weights = scores.softmax(dim=-1)
            # a row with no visible key is NaN after softmax; we define it as zero
            if may_empty and allowed is not None:
                weights.masked_fill_(~allowed.any(dim=-1, keepdim=True), 0.0)
            if probe is not None:
                probe.add(start, scores, weights)
            collector.add(start, weights, allowed)  # (s, H, rows, keys ≤ S): the rest is zero
    full_visible = None
    if masked and not collector.pooled:
        full_visible = _full_visible(q, k, bias, visible, causal, hidden_rows)
    return collector.result(full_visible)


def _allowed(
    visible: Tensor | None,
    causal: bool,
    hidden_rows: Tensor | None,
    start: int,
    stop: int,
    keys: int,
    device: torch.device,
) -> Tensor | None:
    """The structural masks of query rows ``start:stop`` and the first ``keys`` keys, True where a key
    is seen, kept as small as broadcasting allows, ``(…, rows | 1, keys)``; ``None``: nothing hidden."""
    allowed = None if visible is None else _rows(visible, start, stop)[..., :keys]
    if causal:
        tri = torch.arange(keys, device=device)[None, :] <= torch.arange(start, stop, device=device)[:, None]
        allowed = tri if allowed is None else allowed & tri
    if hidden_rows is not None:
        shown = ~hidden_rows[:, start:stop, None][:, None]  # (s, 1, rows, 1)
        allowed = shown if allowed is None else allowed & shown
    return allowed


def _full_visible(
    q: Tensor,
    k: Tensor,
    bias: Tensor | None,
    visible: Tensor | None,
    causal: bool,
    hidden_rows: Tensor | None,
) -> Tensor | None:
    """The mask of attendable positions at full resolution, as small as broadcasting allows."""
    length, width = q.shape[-2], k.shape[-2]
    out = None if visible is None else visible.to("cpu", copy=True)
    if causal:
        tri = torch.ones(length, width, dtype=torch.bool).tril()
        out = tri if out is None else out & tri
    if bias is not None:
        finite = ~torch.isneginf(bias).cpu()
        out = finite if out is None else out & finite
    if hidden_rows is not None:
        shown = ~hidden_rows.cpu()[:, None, :, None]
        out = shown if out is None else out & shown
    return out


def scores_weights(scores: Tensor, storage: Storage = EXACT, probe: Probe | None = None) -> Computed:
    """softmax over keys of scores a tap already finished (FlexAttention's post-``score_mod`` scores),
    a block of rows at a time; ``-inf`` marks a hidden key, and a row with no visible key gets zero.

    Shape:
        scores: ``(s, H, q, k)``.
    """
    rows = lambda start, stop: scores[..., start:stop, :]  # noqa: E731
    return rows_softmax(rows, tuple(scores.shape), storage, probe)


def rows_softmax(
    scores_of: Callable[[int, int], Tensor],
    shape: tuple[int, ...],
    storage: Storage = EXACT,
    probe: Probe | None = None,
    product_of: Callable[[int, Tensor], Tensor] | None = None,
    counts_of: Callable[[int, int], Tensor] | None = None,
) -> Computed:
    """softmax over keys of scores made a block of query rows at a time, so memory stays
    O(samples·H·rows·S) however long the map (Longformer, BigBird, FlexAttention).

    Args:
        scores_of: ``(start, stop) -> (s, H, stop - start, S)`` float logits, ``-inf`` where a key is
            hidden; a row with no visible key gets zero weight.
        shape: ``(s, H, L, S)`` of the whole map.
        product_of: ``(start, weights) -> weights · values`` for the probe's fidelity check, where which
            values a row reads depends on the row (Longformer's global rows read their own).
        counts_of: ``(start, stop) ->`` how many times the kernel's softmax met each visible key
            (broadcastable to the scores): a key met twice weighs ``2·exp(logit)`` (BigBird's random
            blocks may repeat a global or sliding one). The probe still reads the plain logits.
    """
    samples, heads, length, width = shape
    collector = _Collector(samples, heads, length, width, storage, torch.device("cpu"))
    rows = max(1, _CHUNK_ELEMENTS // max(1, samples * heads * width))
    full = None if collector.pooled else torch.ones(shape, dtype=torch.bool)
    hidden = False
    for start in range(0, length, rows):
        stop = min(length, start + rows)
        chunk = scores_of(start, stop).float()
        allowed = ~torch.isneginf(chunk)
        counted = chunk if counts_of is None else chunk + counts_of(start, stop).float().log()
        weights = counted.softmax(dim=-1).masked_fill_(~allowed.any(dim=-1, keepdim=True), 0.0)
        if probe is not None:
            probe.add(start, chunk, weights, None if product_of is None else product_of(start, weights))
        collector.add(start, weights, allowed)
        hidden = hidden or not bool(allowed.all())
        if full is not None:
            full[..., start:stop, :] = allowed.cpu()
    collector.masked = collector.masked and hidden
    return collector.result(full if hidden else None)


def hide_fully_masked_rows(weights: Tensor, padded_queries: Tensor | None) -> Tensor:
    """Zero the rows an eager softmax spread uniformly because every key was masked.

    An eager kernel that masks with a large negative number (DeBERTa, many Hugging Face models) turns
    a padded query's row into 1/n over every key: attention to nothing, drawn as attention to all.
    Such a row is exactly uniform; it is zeroed when its query is padding (``padded_queries``, from
    the batch's attention mask) or, without a mask, when the map has exact zeros elsewhere (so a mask
    was in use). Nothing else changes.

    Shape:
        weights: ``(s, H, L, S)``; padded_queries: ``(s, L)`` bool, True for padding.
    """
    if weights.shape[-1] < 2:
        return weights
    uniform = (weights == weights[..., :1]).all(-1)  # (s, H, L)
    if padded_queries is not None and padded_queries.shape == (weights.shape[0], weights.shape[-2]):
        empty = uniform & padded_queries[:, None, :].to(uniform.device)
    else:
        masking = (weights == 0).flatten(-2).any(-1)[..., None]  # (s, H, 1)
        empty = uniform & masking
    if not bool(empty.any()):
        return weights
    return weights.masked_fill(empty[..., None], 0.0)


def collect_weights(
    weights: Tensor,
    storage: Storage = EXACT,
    padded_queries: Tensor | None = None,
    probe: Probe | None = None,
) -> Computed:
    """Pass weights a model computed itself (eager softmax) through the same pooling and statistics,
    a block of rows at a time. Exact zeros are taken as masked positions; rows spread uniformly over
    fully masked keys are zeroed first (:func:`hide_fully_masked_rows`). ``probe`` compares them, times
    the values the model multiplied them with, with the product the model computed.

    Shape:
        weights: ``(s, H, q, k)``; padded_queries: ``(s, q)`` bool, True for padding.
    """
    weights = hide_fully_masked_rows(weights, padded_queries)
    samples, heads, length, width = weights.shape
    collector = _Collector(samples, heads, length, width, storage, weights.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, samples * heads * width))
    any_zero = False
    for start in range(0, length, rows):
        chunk = weights[..., start : start + rows, :].float()
        nonzero = chunk != 0
        any_zero = any_zero or not bool(nonzero.all())
        if probe is not None:  # the logits are not seen here: fidelity and value norms only
            probe.add(start, None, chunk)
        collector.add(start, chunk, nonzero)
    full = (weights != 0).cpu() if any_zero and not collector.pooled else None
    collector.masked = collector.masked and any_zero
    return collector.result(full)


def _rows(mask: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of a mask whose query dim may be broadcast (size 1)."""
    return mask if mask.shape[-2] == 1 else mask[..., start:stop, :]
