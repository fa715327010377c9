"""Turn captured maps into what is stored and drawn: one sample, one layer, as it ran or pooled by the
one rule (:mod:`~lightning_attnviz.capture.pooling`) to a drawable size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from lightning_attnviz.analysis.vision import mean_attention_distance
from lightning_attnviz.capture.blocks import AxisPlan, plan_axis, pool, pooling_note
from lightning_attnviz.capture.grid import PatchGrid, stage_grid
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
        q_labels, k_labels: one label per row / column (tokens, patches, or pooled blocks).
        note: how the map was reduced (empty when it is drawn as captured).
        pooling: the query and key axes' plans from the tokens to these rows and columns, when the map
            is pooled (:mod:`~lightning_attnviz.capture.pooling`); ``None``: the map as it ran.
        layout: the module's kind of attention (:attr:`AttentionMap.layout`): ``"pool"`` is an
            attention pool, whose latent rows are what a classifier reads.
        stage: ``(rows, cols)`` of the token grid a windowed map lies on (:attr:`AttentionMap.grid`);
            ``None`` for other maps.
    """

    layer: str
    sample: int
    weights: np.ndarray
    visible: np.ndarray | None
    q_labels: list[str]
    k_labels: list[str]
    note: str = ""
    pooling: tuple[AxisPlan, AxisPlan] | None = None
    layout: str = "token"
    stage: tuple[int, int] | None = None

    @property
    def heads(self) -> int:
        return self.weights.shape[0]

    @property
    def length(self) -> tuple[int, int]:
        """``(q, k)`` tokens of the map as it ran."""
        if self.pooling is None:
            return self.weights.shape[-2], self.weights.shape[-1]
        return self.pooling[0].length, self.pooling[1].length

    def head_mean(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean over heads, ``(q, k)``; a position is visible if any head sees it."""
        visible = None if self.visible is None else np.asarray(self.visible.any(axis=0))
        return self.weights.mean(axis=0), visible


def make_views(
    records: Sequence[AttentionMap],
    labels: Sequence[Sequence[str] | None],
    max_tokens: int | None = None,
    target_labels: Sequence[Sequence[str] | None] = (),
    grid: PatchGrid | None = None,
    keep: int = 1,
) -> list[AttentionView]:
    """One view per (sample, record), in sample-major then forward order.

    Args:
        records: captured maps of the fixed samples.
        labels: per sample, one label per source token (``input_ids``), or ``None`` for positions.
        max_tokens: longer axes are pooled by the rule (:func:`pool_view`); ``None``: the maps as
            stored.
        target_labels: per sample, the decoder's tokens. Each axis is labelled from the token axis
            the record names (:attr:`AttentionMap.axes`): a cross-attention's queries are target
            tokens and its keys source tokens. An axis whose length does not match its labels shows
            positions.
        grid, keep: the image's patch grid and the leading tokens never pooled (see
            :func:`~lightning_attnviz.capture.pooling.plan_axis`); an axis of the grid's length is
            labelled with its patches.
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
            tokens = (per_axis.get(axes[0]), per_axis.get(axes[1]))
            stage = getattr(record, "grid", None)  # a windowed map lies on its own stage's token grid
            on = stage_grid(grid, stage) if stage is not None else grid
            view = _stored_view(record, sample, tokens, on)
            views.append(view if max_tokens is None else pool_view(view, max_tokens, on, keep))
    return views


def _stored_view(
    record: AttentionMap, sample: int, tokens: tuple[Sequence[str] | None, ...], grid: PatchGrid | None
) -> AttentionView:
    """One sample of ``record`` as stored: float16 precision (a saved capture holds float16, so that
    what is drawn from the file is what was drawn here), labelled per token or pooled block."""
    weights = record.weights[sample].numpy()
    visible = None
    if record.visible is not None:  # broadcastable to (s, H, q, k)
        t = record.visible.reshape((1,) * (4 - record.visible.dim()) + tuple(record.visible.shape))
        v = t[sample if t.shape[0] > 1 else 0].numpy()  # (1 | H, q | 1, k)
        visible = np.ascontiguousarray(np.broadcast_to(v, (v.shape[0], *weights.shape[-2:])))
    plans = record.pooling
    if plans is None:
        q_len, k_len = weights.shape[-2:]
        q_labels, k_labels = _labels(tokens[0], q_len, grid), _labels(tokens[1], k_len, grid)
        note = ""
    else:
        q_labels, k_labels = (
            plan.labels(_fits(t, plan.length)) for plan, t in zip(plans, tokens, strict=True)
        )
        note = pooling_note(*plans)
    rounded = half_precision(weights)
    layout = getattr(record, "layout", "token")
    stage = getattr(record, "grid", None)
    return AttentionView(record.key, sample, rounded, visible, q_labels, k_labels, note, plans, layout, stage)


def half_precision(weights: np.ndarray | torch.Tensor) -> np.ndarray:
    """float32 rounded to float16 precision, as a saved capture keeps maps (torch converts attention's
    many float16-subnormal weights ten times faster than numpy)."""
    t = weights if isinstance(weights, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(weights))
    return t.to(torch.float16).to(torch.float32).numpy()


def _fits(tokens: Sequence[str] | None, length: int) -> list[str] | None:
    return [str(t) for t in tokens] if tokens is not None and len(tokens) == length else None


def _labels(tokens: Sequence[str] | None, length: int, grid: PatchGrid | None = None) -> list[str]:
    for labels in (tokens, grid.labels() if grid is not None else None):
        if labels is not None and len(labels) == length:
            return [str(t) for t in labels]
    return [str(i) for i in range(length)]


def pool_view(
    view: AttentionView, max_tokens: int, grid: PatchGrid | None = None, keep: int = 1
) -> AttentionView:
    """``view`` with every axis longer than ``max_tokens`` pooled by the rule
    (:mod:`~lightning_attnviz.capture.pooling`): prefix and sink tokens alone, an image's patches in
    squares, other tokens in contiguous blocks; query rows averaged and keys summed, so pooled rows
    still sum to 1. A view already pooled while capturing is pooled further in whole blocks, and its
    labels and note describe the pooling from the tokens as they ran, said once.

    Args:
        grid: the image's patch grid (an axis of its length is pooled in squares of patches).
        keep: leading tokens never pooled (the sink tokens).
    """
    q_len, k_len = view.weights.shape[-2:]
    base = view.pooling or (plan_axis(q_len, None, grid), plan_axis(k_len, None, grid))
    step = tuple(plan_axis(b.blocks, max_tokens, b.cells, b.alone if b.pooled else keep) for b in base)
    if not step[0].pooled and not step[1].pooled:
        return view
    rows = torch.from_numpy(base[0].sizes)
    weights = pool(torch.from_numpy(view.weights), step[0], step[1], rows).numpy()
    visible = None
    if view.visible is not None:
        visible = pool(torch.from_numpy(np.array(view.visible)), step[0], step[1]).numpy()
    plans = (base[0].then(step[0]), base[1].then(step[1]))
    own = [
        [labels[g] for g in b.group] for labels, b in zip((view.q_labels, view.k_labels), base, strict=True)
    ]
    q_labels, k_labels = (plan.labels(o) for plan, o in zip(plans, own, strict=True))
    rounded = half_precision(weights)
    return replace(view, weights=rounded, visible=visible, q_labels=q_labels, k_labels=k_labels,
                   note=pooling_note(*plans), pooling=plans)  # fmt: skip


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
