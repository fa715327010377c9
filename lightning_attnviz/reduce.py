"""Turn captured maps into what pictures show: one sample, one layer, pooled to a drawable size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lightning_attnviz.capture import AttentionMap


@dataclass(frozen=True)
class AttentionView:
    """One sample's attention in one layer, ready to draw.

    Attributes:
        layer: the capture key (module name, ``#n`` for repeated calls).
        sample: index of the fixed sample.
        weights: float32 ``(heads, q, k)``; rows sum to 1 (or 0 where every key is masked).
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
        visible = None if self.visible is None else self.visible.any(axis=0)
        return self.weights.mean(axis=0), visible


def make_views(
    records: Sequence[AttentionMap],
    labels: Sequence[Sequence[str] | None],
    max_tokens: int = 64,
) -> list[AttentionView]:
    """One view per (sample, record), in sample-major then forward order.

    Args:
        records: captured maps of the fixed samples.
        labels: per sample, one label per token, or ``None`` for positions. Labels are used for an
            axis whose length matches them (keys of a cross-attention get positions).
        max_tokens: longer axes are block-pooled to at most this many rows/columns.
    """
    views = []
    samples = min((r.weights.shape[0] for r in records), default=0)
    for sample in range(samples):
        tokens = labels[sample] if sample < len(labels) else None
        for record in records:
            weights = record.weights[sample].numpy()
            visible = None
            if record.visible is not None:
                v = record.visible
                v = v[sample if v.shape[0] > 1 else 0] if v.dim() == 4 else v
                visible = np.broadcast_to(v.numpy(), weights.shape[-3:] if v.dim() == 3 else weights.shape)
                visible = visible if visible.ndim == 3 else visible[None]
            q_len, k_len = weights.shape[-2:]
            views.append(
                pool_view(
                    AttentionView(
                        layer=record.key,
                        sample=sample,
                        weights=np.ascontiguousarray(weights, dtype=np.float32),
                        visible=None if visible is None else np.ascontiguousarray(visible),
                        q_labels=_labels(tokens, q_len),
                        k_labels=_labels(tokens, k_len),
                    ),
                    max_tokens,
                )
            )
    return views


def _labels(tokens: Sequence[str] | None, length: int) -> list[str]:
    if tokens is not None and len(tokens) == length:
        return [str(t) for t in tokens]
    return [str(i) for i in range(length)]


def pool_view(view: AttentionView, max_tokens: int) -> AttentionView:
    """Block-pool an axis longer than ``max_tokens``.

    Query rows are averaged and keys summed, so pooled rows still sum to 1 and read as "how much of
    this block's attention goes to that block". Pooled axes are labelled with position ranges.
    """
    q_len, k_len = view.weights.shape[-2:]
    q_block, k_block = math.ceil(q_len / max_tokens), math.ceil(k_len / max_tokens)
    if q_block == 1 and k_block == 1:
        return view
    weights = _block_reduce(view.weights, q_block, k_block)
    visible = None if view.visible is None else _block_reduce(view.visible, q_block, k_block)
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
        return a.reshape(*a.shape[:-2], a.shape[-2] // qb, qb, a.shape[-1] // kb, kb).any(axis=(-3, -1))
    a = np.pad(a.astype(np.float64), pad)
    blocks = a.reshape(*a.shape[:-2], a.shape[-2] // qb, qb, a.shape[-1] // kb, kb)
    rows = np.minimum(qb, q_len - np.arange(0, q_len, qb))  # real rows per query block
    return blocks.sum(axis=(-3, -1)) / rows[:, None]


def _range_labels(length: int, block: int) -> list[str]:
    return [f"{i}–{min(i + block, length) - 1}" for i in range(0, length, block)]
