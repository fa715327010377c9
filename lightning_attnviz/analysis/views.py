"""Turn captured maps into what pictures show: one sample, one layer, pooled to a drawable size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from lightning_attnviz.analysis.vision import mean_attention_distance
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.inputs import AttentionMap
from lightning_attnviz.capture.pooling import RowStats


@dataclass(frozen=True)
class AttentionView:
    """One sample's attention in one layer, ready to draw.

    Attributes:
        layer: the capture key (module name, ``#n`` for repeated calls).
        sample: index of the fixed sample.
        weights: float32 ``(heads, q, k)``, rounded to float16 precision by :func:`make_views` (so
            exported captures re-render pixel-equal); rows sum to 1 (0 where every key is masked).
        visible: bool ``(1 | heads, q, k)``, False where a mask hid the key; ``None`` if nothing was masked.
        q_labels, k_labels: one label per row / column (tokens, positions, or pooled ranges).
        note: how the map was reduced (empty when it is drawn as captured).
    """

    layer: str
    sample: int
    weights: np.ndarray
    visible: np.ndarray | None
    q_labels: list[str]
    k_labels: list[str]
    note: str = ""

    @property
    def heads(self) -> int:
        return self.weights.shape[0]

    def head_mean(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean over heads, ``(q, k)``; a position is visible if any head sees it."""
        visible = None if self.visible is None else np.asarray(self.visible.any(axis=0))
        return self.weights.mean(axis=0), visible


def make_views(
    records: Sequence[AttentionMap],
    labels: Sequence[Sequence[str] | None],
    max_tokens: int = 64,
    target_labels: Sequence[Sequence[str] | None] = (),
    grid_labels: Sequence[str] | None = None,
) -> list[AttentionView]:
    """One view per (sample, record), in sample-major then forward order.

    Args:
        records: captured maps of the fixed samples.
        labels: per sample, one label per source token (``input_ids``, or image patches), or
            ``None`` for positions.
        max_tokens: longer axes are block-pooled to at most this many rows/columns.
        target_labels: per sample, the decoder's tokens. Each axis is labelled from the token axis
            the record names (:attr:`AttentionMap.axes`): a cross-attention's queries are target
            tokens and its keys source tokens. An axis whose length does not match its labels shows
            positions.
    """
    views = []
    samples = min((r.weights.shape[0] for r in records), default=0)
    for sample in range(samples):
        per_axis = {
            "source": labels[sample] if sample < len(labels) else None,
            "target": target_labels[sample] if sample < len(target_labels) else None,
        }
        for record in records:
            axes = getattr(record, "axes", ("source", "source"))
            q_tokens, k_tokens = per_axis.get(axes[0]), per_axis.get(axes[1])
            weights = record.weights[sample].numpy()
            visible = None
            if record.visible is not None:  # broadcastable to (s, H, q, k)
                t = record.visible.reshape((1,) * (4 - record.visible.dim()) + tuple(record.visible.shape))
                v = t[sample if t.shape[0] > 1 else 0].numpy()  # (1 | H, q | 1, k)
                visible = np.broadcast_to(v, (v.shape[0], *weights.shape[-2:]))
            q_len, k_len = record.length if record.block != (1, 1) else weights.shape[-2:]
            stage = getattr(record, "grid", None)  # a windowed map's own token grid: label its cells
            if stage is not None:
                q_tokens = k_tokens = [f"{r},{c}" for r in range(stage[0]) for c in range(stage[1])]
            view = pool_view(
                AttentionView(
                    layer=record.key,
                    sample=sample,
                    weights=np.ascontiguousarray(weights, dtype=np.float32),
                    visible=None if visible is None else np.ascontiguousarray(visible),
                    q_labels=_labels(q_tokens, q_len, grid_labels),
                    k_labels=_labels(k_tokens, k_len, grid_labels),
                ),
                max_tokens,
                length=(q_len, k_len),
                block=record.block,
            )
            # float16 precision, so that a saved capture re-renders pixel-equal to the logged image
            views.append(replace(view, weights=view.weights.astype(np.float16).astype(np.float32)))
    return views


def _labels(tokens: Sequence[str] | None, length: int, grid: Sequence[str] | None = None) -> list[str]:
    for labels in (tokens, grid):
        if labels is not None and len(labels) == length:
            return [str(t) for t in labels]
    return [str(i) for i in range(length)]


def pool_view(
    view: AttentionView,
    max_tokens: int,
    length: tuple[int, int] | None = None,
    block: tuple[int, int] = (1, 1),
) -> AttentionView:
    """Block-pool an axis longer than ``max_tokens``.

    Query rows are averaged and keys summed, so pooled rows still sum to 1 and read as "how much of
    this block's attention goes to that block". Pooled axes are labelled with position ranges and the
    note says how the map was reduced.

    Args:
        view: the view, whose labels are per row/column of its weights unless ``block`` says otherwise.
        max_tokens: the largest side drawn.
        length, block: the sequence lengths and the block sizes of a map already pooled while capturing.
    """
    q_now, k_now = view.weights.shape[-2:]
    q_len, k_len = length or (q_now, k_now)
    q_more, k_more = math.ceil(q_now / max_tokens), math.ceil(k_now / max_tokens)
    q_block, k_block = block[0] * q_more, block[1] * k_more
    if q_block == 1 and k_block == 1:
        return view
    weights = _block_reduce(view.weights, q_more, k_more) if (q_more, k_more) != (1, 1) else view.weights
    visible = view.visible
    if visible is not None and (q_more, k_more) != (1, 1):
        visible = _block_reduce(visible, q_more, k_more)
    parts = []
    if q_block > 1:
        parts.append(f"queries {q_len}→{weights.shape[-2]} (mean of {q_block})")
    if k_block > 1:
        parts.append(f"keys {k_len}→{weights.shape[-1]} (sum of {k_block})")
    return AttentionView(
        layer=view.layer,
        sample=view.sample,
        weights=weights.astype(np.float32),
        visible=visible,
        q_labels=_range_labels(q_len, q_block) if q_block > 1 else view.q_labels,
        k_labels=_range_labels(k_len, k_block) if k_block > 1 else view.k_labels,
        note="pooled " + ", ".join(parts),
    )


def _block_reduce(a: np.ndarray, qb: int, kb: int) -> np.ndarray:
    """``(..., q, k)`` over blocks of ``qb`` rows and ``kb`` columns (the last blocks may be short):
    any() for masks; for weights, keys summed and rows averaged over the real rows of a block."""
    q_len, k_len = a.shape[-2:]
    pad = [(0, 0)] * (a.ndim - 2) + [(0, -q_len % qb), (0, -k_len % kb)]
    if a.dtype == bool:
        a = np.pad(a, pad, constant_values=False)
        blocks = a.reshape(*a.shape[:-2], a.shape[-2] // qb, qb, a.shape[-1] // kb, kb)
        return np.asarray(blocks.any(axis=(-3, -1)))
    a = np.pad(a.astype(np.float64), pad)
    blocks = a.reshape(*a.shape[:-2], a.shape[-2] // qb, qb, a.shape[-1] // kb, kb)
    rows = np.minimum(qb, q_len - np.arange(0, q_len, qb))  # real rows per query block
    return blocks.sum(axis=(-3, -1)) / rows[:, None]


def _range_labels(length: int, block: int) -> list[str]:
    return [f"{i}–{min(i + block, length) - 1}" for i in range(0, length, block)]


# The per-head statistics of a layer (the fields of LayerStats), and every metric logged per layer:
# these plus the drift since the previous capture, which needs two captures (analysis.history).
METRICS: tuple[str, ...] = ("entropy", "entropy_norm", "distance", "sink", "max_weight")
LOGGED_METRICS: tuple[str, ...] = (*METRICS, "drift")
# The heads' role scores (analysis.roles), fields of LayerStats too, logged under attention_roles/.
ROLES: tuple[str, ...] = ("previous_token", "duplicate_token", "induction", "first_token")


@dataclass(frozen=True)
class LayerStats:
    """Scalars of one layer, averaged over the fixed samples; ``per_head`` arrays have one value a head.

    Attributes:
        entropy: mean entropy of the query rows, in nats.
        entropy_norm: the same, each row divided by log(number of visible keys): 0 = one key, 1 = uniform.
            Rows with fewer than two visible keys are left out (they have no choice).
        distance: mean attention distance: in positions for sequences, Σ_j a_ij·|i−j| averaged over
            rows (self-attention only: NaN when queries and keys are different sequences); in pixels
            between patch centres for a layer on an image's patch grid (the ViT paper's measure, see
            :func:`~lightning_attnviz.capture.grid.mean_attention_distance`).
        sink: mean weight on the first ``sink_tokens`` keys (the attention-sink share).
        max_weight: the largest weight.
        previous_token, duplicate_token, induction, first_token: the heads' role scores
            (:mod:`~lightning_attnviz.analysis.roles`); empty until scored, NaN for a head not scored.
    """

    layer: str
    entropy: np.ndarray
    entropy_norm: np.ndarray
    distance: np.ndarray
    sink: np.ndarray
    max_weight: np.ndarray
    previous_token: np.ndarray = field(default_factory=lambda: _NONE)
    duplicate_token: np.ndarray = field(default_factory=lambda: _NONE)
    induction: np.ndarray = field(default_factory=lambda: _NONE)
    first_token: np.ndarray = field(default_factory=lambda: _NONE)

    METRICS = METRICS
    ROLES = ROLES


_NONE: np.ndarray = np.zeros(0, dtype=np.float32)  # a role not scored: no value for any head


def layer_stats(record: AttentionMap, sink_tokens: int = 1, grid: PatchGrid | None = None) -> LayerStats:
    """Per-head scalars of one captured layer, from every row at full resolution.

    Uses the statistics accumulated while capturing when they count the same sink keys (necessarily
    so when the map was pooled), else computes them from the exact map. With ``grid`` and an exact
    map whose queries and keys are the grid's tokens, the distance is in pixels; a windowed map lies on
    its own stage's grid (:attr:`AttentionMap.grid`, :meth:`PatchGrid.stage`).

    Shape:
        record.weights: ``(samples, heads, q, k)``; every array of the result: ``(heads,)``.
    """
    stats = record.stats
    exact = record.block == (1, 1)
    if stats is None or (exact and stats.sink_keys != sink_tokens):
        if not exact:
            raise ValueError(f"{record.key!r} was pooled while capturing without `stats=True`")
        samples, heads, q_len, k_len = record.weights.shape
        stats = RowStats.empty(samples, heads, q_len == k_len, sink_tokens)
        stats.update(0, record.weights, record.visible)
    values = stats.per_head()
    q_len, k_len = record.weights.shape[-2:]
    stage = getattr(record, "grid", None)
    if grid is not None and stage is not None:
        grid = grid.stage(stage)
    if grid is not None and exact and q_len == k_len == grid.length:
        per_sample = np.stack([mean_attention_distance(w, grid) for w in record.weights])
        finite = np.isfinite(per_sample)
        count = finite.sum(axis=0)
        total = np.where(finite, per_sample, 0.0).sum(axis=0)
        # an all-NaN head stays NaN, without numpy's "mean of empty slice" warning
        values["distance"] = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
    return LayerStats(layer=record.key, **values)


def js_divergence(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Mean Jensen–Shannon divergence (nats) between matching query rows of two captures, per head.

    Rows that carry no weight in either capture are left out; 0 = unchanged, log 2 = disjoint.

    Shape:
        previous, current: ``(heads, q, k)``; result ``(heads,)``.
    """
    p, q = previous.astype(np.float64), current.astype(np.float64)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0).sum(-1)
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum(-1)
    js = 0.5 * (kl_p + kl_q)  # (H, q)
    rows = (p.sum(-1) > 0) & (q.sum(-1) > 0)
    count = rows.sum(-1)
    return np.where(count > 0, np.where(rows, js, 0.0).sum(-1) / np.maximum(count, 1), np.nan)
