"""Where computed weights go, a block of query rows at a time: kept whole or pooled by the one rule
(:mod:`~lightning_attnviz.capture.blocks`), with per-row statistics accumulated at full resolution on
the way (so long maps never exist whole)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_attnviz.capture.blocks import AxisPlan, block_index, plan_map
from lightning_attnviz.capture.grid import PatchGrid


@dataclass
class RowStats:
    """Per-row statistics of attention weights, summed per ``(sample, head)`` as rows stream by, so
    they use every row at full resolution even when the stored map is pooled.

    Finalise with :meth:`per_head` (means over samples and rows).
    """

    rows: Tensor  # rows with any weight
    entropy: Tensor  # Σ over those rows of -Σ_j a log a (nats)
    choice_rows: Tensor  # rows with at least two visible keys
    entropy_norm: Tensor  # Σ over those rows of entropy / log(visible keys)
    distance: Tensor | None  # Σ over rows of Σ_j a_ij·|i−j| (square maps only)
    sink: Tensor  # Σ over rows of the weight on the first ``sink_keys`` keys, (s, H)
    max_weight: Tensor
    sink_keys: int = 1

    @classmethod
    def empty(cls, samples: int, heads: int, square: bool, sink_keys: int = 1) -> RowStats:
        zeros = torch.zeros(samples, heads, dtype=torch.float64)
        return cls(
            zeros.clone(),
            zeros.clone(),
            zeros.clone(),
            zeros.clone(),
            zeros.clone() if square else None,
            zeros.clone(),
            zeros.clone(),
            sink_keys,
        )

    def update(self, start: int, weights: Tensor, visible: Tensor | None, keys: Tensor | None = None) -> None:
        """Add rows ``start : start + rows`` of ``weights`` ``(s, H, rows, S)``; ``visible`` broadcastable.

        ``keys``: ``(rows, S)``, the position of each column when the rows are compact (a windowed map:
        only the keys of each query's window, every other key weighing 0); ``None``: column ``j`` is key
        ``j``."""
        w = weights.float()  # float32 per row, float64 sums across rows
        finite = torch.isfinite(w).all(-1, keepdim=True)
        if not bool(finite.all()):  # rows with NaN/inf (non-finite inputs) are left out
            w = torch.where(finite, w, 0.0)
        live = w.sum(-1) > 0  # (s, H, rows)
        entropy = -(w * w.clamp_min(1e-30).log()).sum(-1)  # 0·log 0 = 0 (and faster than xlogy)
        n_visible = torch.full_like(entropy, w.shape[-1])
        if visible is not None:  # count on the (small, broadcast) mask, then broadcast the counts
            n_visible = visible.sum(-1).float().expand_as(entropy)
        choice = live & (n_visible > 1)
        f64 = torch.float64
        self.rows += live.sum(-1)
        self.entropy += torch.where(live, entropy, 0.0).sum(-1, dtype=f64)
        self.choice_rows += choice.sum(-1)
        self.entropy_norm += torch.where(choice, entropy / n_visible.clamp_min(2).log(), 0.0).sum(
            -1, dtype=f64
        )
        cols = torch.arange(w.shape[-1], device=w.device)[None, :] if keys is None else keys.to(w.device)
        if self.distance is not None:
            rows = torch.arange(start, start + w.shape[-2], device=w.device)
            gap = (rows[:, None] - cols).abs().to(w.dtype)  # (rows, S)
            self.distance += torch.einsum("shrk,rk->sh", w, gap.expand(w.shape[-2], -1)).double()
        sink = w[..., : self.sink_keys] if keys is None else w * (keys < self.sink_keys).to(w.device)
        self.sink += sink.sum(dim=(-2, -1), dtype=f64)
        self.max_weight = torch.maximum(self.max_weight, w.amax(dim=(-2, -1)).double())

    def to(self, device: str | torch.device) -> RowStats:
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        moved: dict[str, Any] = {f: v.to(device) for f, v in fields.items() if isinstance(v, Tensor)}
        return replace(self, **moved)

    def per_head(self) -> dict[str, np.ndarray]:
        """Means over samples and rows, per head: entropy, entropy_norm, distance, sink (the share on
        the first ``sink_keys`` keys), max_weight (NaN where no row counts, e.g. distance of a
        cross-attention)."""

        def mean(total: Tensor | None, count: Tensor) -> np.ndarray:
            if total is None:
                return np.full(count.shape[-1], np.nan, dtype=np.float32)
            n = count.sum(0)
            return (total.sum(0) / n.clamp_min(1)).masked_fill(n == 0, float("nan")).float().numpy()

        return {
            "entropy": mean(self.entropy, self.rows),
            "entropy_norm": mean(self.entropy_norm, self.choice_rows),
            "distance": mean(self.distance, self.rows),
            "sink": mean(self.sink, self.rows),
            "max_weight": self.max_weight.amax(0).float().numpy(),
        }


@dataclass(frozen=True)
class Storage:
    """How computed maps are kept: pooled by the rule beyond ``max_tokens`` blocks per side (``None``:
    never), with ``grid`` and ``sink_keys`` as :func:`plan_axis` takes them (``sink_keys`` also counts
    the statistics' sink share), and row statistics at full resolution with ``stats``."""

    max_tokens: int | None = None
    stats: bool = False
    sink_keys: int = 1
    grid: PatchGrid | None = None


EXACT = Storage()  # exact maps, no statistics


@dataclass
class Computed:
    """What a weight computation returns.

    Attributes:
        weights: float32 CPU ``(s, H, q', k')``: the full map, or pooled by the rule when longer than
            the limit (query rows averaged, keys summed: pooled rows still sum to 1).
        visible: bool CPU, broadcastable to ``weights``; ``None`` when nothing was masked.
        block: the largest ``(query rows, keys)`` block of a pooled cell; ``(1, 1)`` when not pooled.
        length: ``(q, k)`` before pooling.
        stats: row statistics at full resolution, when asked for.
        plans: how the query and key axes were pooled; ``None`` when the map is exact.
    """

    weights: Tensor
    visible: Tensor | None
    block: tuple[int, int]
    length: tuple[int, int]
    stats: RowStats | None
    plans: tuple[AxisPlan, AxisPlan] | None = None


class _Collector:
    """Takes weight rows block by block: keeps them whole, or pooled by the rule to ≤ ``max_tokens``
    blocks per side, as ``storage`` says."""

    def __init__(
        self,
        samples: int,
        heads: int,
        length: int,
        width: int,
        storage: Storage,
        device: torch.device,
    ) -> None:
        self.length, self.width = length, width
        limit = storage.max_tokens
        self.pooled = limit is not None and max(length, width) > limit
        # plans only when pooling: plain ints otherwise (this may run while Dynamo traces a forward)
        self.plans = plan_map(length, width, limit, storage.grid, storage.sink_keys) if self.pooled else None
        blocks = (self.plans[0].blocks, self.plans[1].blocks) if self.plans is not None else (length, width)
        shape = (samples, heads, *blocks)
        self.out = (
            torch.zeros(shape, dtype=torch.float32)
            if self.pooled
            else torch.empty(shape, dtype=torch.float32)
        )
        self.seen = torch.zeros(shape, dtype=torch.int32) if self.pooled else None  # visible counts
        self.masked = False
        self._groups = (
            tuple(block_index(p.group, device) for p in self.plans) if self.plans is not None else ()
        )
        self.stats = (
            RowStats.empty(samples, heads, length == width, storage.sink_keys).to(device)
            if storage.stats
            else None
        )

    def add(self, start: int, weights: Tensor, visible: Tensor | None) -> None:
        """Rows ``start:start + rows``: ``weights`` ``(s, H, rows, keys)``, keys beyond ``keys`` are zero
        (and hidden when ``visible`` is given); ``visible`` broadcastable to ``weights``."""
        if self.stats is not None:
            self.stats.update(start, weights, visible)
        stop, keys = start + weights.shape[-2], weights.shape[-1]
        if not self.pooled:
            self.out[..., start:stop, :keys] = weights
            self.out[..., start:stop, keys:] = 0.0
            return
        index = self._groups[0][start:stop].cpu()
        pooled = self._key_blocks(weights.float()).cpu()  # (s, H, rows, K')
        self.out.index_add_(2, index, pooled)
        if visible is None:
            seen = torch.ones(1, dtype=torch.int32).expand(pooled.shape)
        else:
            self.masked = True
            if visible.shape[-1] != keys:  # broadcast over keys: every key of the row
                visible = visible.expand(*visible.shape[:-1], keys)
            seen = self._key_blocks(visible.float()).int().cpu()  # as small as the mask broadcasts
            seen = seen.reshape((1,) * (4 - seen.dim()) + tuple(seen.shape)).expand(pooled.shape)
        if self.seen is not None:  # always, when pooled
            self.seen.index_add_(2, index, seen.contiguous())

    def scatter(self, rows: Tensor, cols: Tensor, values: Tensor) -> None:
        """The whole map given entry by entry (a windowed map): ``values`` ``(s, H, V)`` at ``(rows[v],
        cols[v])``, every other entry zero and hidden. Pooled, each entry lands in its block directly, so
        the cost is O(V), not O(L²). Row statistics are the caller's (:meth:`RowStats.update` with
        ``keys``)."""
        self.masked = True
        if self.plans is not None:  # each token's block by the plans
            rows, cols = self._groups[0].cpu()[rows], self._groups[1].cpu()[cols]
        flat = rows * self.out.shape[-1] + cols
        out = self.out.view(*self.out.shape[:2], -1)
        if not self.pooled:
            out.zero_()
            out[..., flat] = values.to(out.dtype)
            return
        out.index_add_(2, flat, values.to(out.dtype))
        if self.seen is not None:  # always, when pooled
            seen = self.seen.view(*self.seen.shape[:2], -1)
            seen[..., flat] = 1  # as any() of the block's visibility: the block has a visible entry

    def _key_blocks(self, t: Tensor) -> Tensor:
        """Sum ``(..., keys)`` over the key plan's blocks (the first ``keys`` keys; the rest are zero)."""
        keys = t.shape[-1]
        out = t.new_zeros((*t.shape[:-1], self.out.shape[-1]))
        return out.index_add_(-1, self._groups[1][:keys], t)

    def result(self, visible: Tensor | None) -> Computed:
        """``visible``: the full-resolution mask (used when not pooled)."""
        stats = None if self.stats is None else self.stats.to("cpu")
        length = (self.length, self.width)
        if self.plans is None:
            return Computed(self.out, visible, (1, 1), length, stats)
        rows = torch.from_numpy(self.plans[0].sizes).float()
        pooled_visible = (self.seen > 0) if self.masked and self.seen is not None else None
        block = (int(self.plans[0].sizes.max()), int(self.plans[1].sizes.max()))
        return Computed(self.out / rows[:, None], pooled_visible, block, length, stats, self.plans)
