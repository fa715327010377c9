"""What a tap keeps of one attention call, and the pure function that turns it into weights.

Capture runs on the training thread and only copies the sampled rows' inputs (q/k, masks, and for
``nn.MultiheadAttention`` the rows it projected) into frozen dataclasses of detached CPU tensors.
:func:`compute` then makes the weights from them, anywhere: right away, on a thread, or in the
drawing process after a pickle round trip. Nothing here touches a module or a hook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor

from lightning_attnviz.capture.banded import BandInputs, band_weights
from lightning_attnviz.capture.blocks import AxisPlan
from lightning_attnviz.capture.blocksparse import BlockSparseInputs, block_sparse_weights
from lightning_attnviz.capture.grid import PatchGrid, stage_grid
from lightning_attnviz.capture.mha import MHAInputs, mha_probe, mha_weights
from lightning_attnviz.capture.pooling import Computed, RowStats, Storage
from lightning_attnviz.capture.probe import Health, Probe, eager_probe, sdpa_probe
from lightning_attnviz.capture.weights import collect_weights, scores_weights, sdpa_weights
from lightning_attnviz.capture.windows import WindowInputs, window_weights

__all__ = ["MHAInputs"]  # defined with the rest of nn.MultiheadAttention's capture, read from here too

Path = Literal["sdpa", "mha", "eager_softmax", "flex", "banded", "block_sparse"]


@dataclass(frozen=True)
class SDPAInputs:
    """The arguments of one ``F.scaled_dot_product_attention`` call, sampled rows only.

    ``v`` and ``out`` (the kernel's own output) are kept for the fidelity check and value norms.

    Shape:
        q: ``(s, ..., Hq, L, E)``; k, v: ``(s, ..., Hk, S, E|Ev)``; mask broadcastable to the scores;
        out: ``(s, ..., Hq, L, Ev)``.
    """

    q: Tensor
    k: Tensor
    mask: Tensor | None
    causal: bool
    scale: float | None
    gqa: bool
    v: Tensor | None = None
    out: Tensor | None = None


@dataclass(frozen=True)
class SoftmaxOutput:
    """The weights an eager attention computed itself, ``(s, H, L, S)``; ``padded_queries`` ``(s, L)``
    (True: padding, from the batch's attention mask) when known; ``max_logit`` ``(s, H)`` the largest
    finite entry of the softmax's input (the logits). ``values`` ``(s, H, S, Ev)`` and ``product``
    ``(s, H, L, Ev)``: the operands and result of the first ``attention @ values`` the module computed
    after the softmax, when it computed one (for the fidelity check: a module that changes its
    weights between the softmax and the product, e.g. by mixing heads, is caught there)."""

    weights: Tensor
    padded_queries: Tensor | None = None
    max_logit: Tensor | None = None
    values: Tensor | None = None
    product: Tensor | None = None


@dataclass(frozen=True)
class ScoresInputs:
    """Scores a tap finished itself, ``(s, H, L, S)``, ``-inf`` where hidden: FlexAttention's scores
    after the model's ``score_mod`` and block mask (:func:`~lightning_attnviz.capture.flex.flex_scores`)."""

    scores: Tensor


Inputs = SDPAInputs | MHAInputs | SoftmaxOutput | ScoresInputs | WindowInputs | BandInputs | BlockSparseInputs


@dataclass(frozen=True)
class Pending:
    """One attention call seen during capture, its weights not yet computed.

    Attributes:
        key: the record's key: the module name for its first call, ``"<name>#<n>"`` for call ``n``
            (``#`` is kept in tags, so ``attn#1`` never meets a module ``attn_1``; one ``#`` more when
            another watched module is named ``attn#1`` itself).
        module: qualified name of the module that made the call.
        call: 0-based index of this call of ``module`` in the capture.
        path: how the weights are obtained (see :class:`AttentionMap`).
        inputs: what :func:`compute` needs.
        causal, masked, gqa_groups, scale, dropout_p: as in :class:`AttentionMap`.
    """

    key: str
    module: str
    call: int
    path: Path
    inputs: Inputs
    causal: bool | None
    masked: bool | None
    gqa_groups: int
    scale: float | None
    dropout_p: float
    axes: tuple[str, str] = ("source", "source")
    layout: str = "token"
    note: str | None = None


# what a map keeps of its pending call: every field of Pending but the inputs it is computed from
_PENDING_META = tuple(f.name for f in fields(Pending) if f.name != "inputs")


@dataclass(frozen=True)
class AttentionMap:
    """One attention computation seen during capture.

    Attributes:
        key: the module name for its first call since the context was entered, ``"<name>#<n>"`` for
            call ``n`` (a shared module, or self- and cross-attention computed inside one module).
        module: qualified name of the module that computed it.
        call: 0-based index of this call of ``module`` since the context was entered.
        weights: float32 CPU tensor, ``(samples, heads, q_len, k_len)``; rows sum to 1, or to 0 where
            every key is masked.
        visible: bool CPU tensor broadcastable to ``weights``, False where a mask hid the key; ``None``
            when nothing was masked. For eager softmax it is inferred as ``weights != 0``.
        path: ``"sdpa"`` (recomputed beside ``F.scaled_dot_product_attention``), ``"mha"``
            (recomputed from ``nn.MultiheadAttention`` projections, fast path or not) or
            ``"eager_softmax"`` (the model's own softmax output).
        causal: ``is_causal`` was set; ``None`` when the path does not say (eager softmax).
        masked: a mask was applied; ``None`` when the path does not say.
        gqa_groups: query heads per key head (1 without grouped-query attention done by SDPA).
        scale: the scale applied to ``q·kᵀ``; ``None`` when unknown (eager softmax).
        dropout_p: dropout applied *after* these weights in train mode; it is not part of them.
        length: ``(q_len, k_len)`` of the attention as computed.
        block: the largest ``(query rows, keys)`` block of a cell when the map was pooled while
            capturing (``max_tokens``, see :mod:`~lightning_attnviz.capture.pooling` for the rule):
            query rows averaged, keys summed, so rows still sum to 1. ``(1, 1)``: exact.
        pooling: the query and key axes' plans when the map was pooled; ``None`` when exact.
        stats: per-row statistics at full resolution (with ``stats=True``).
        axes: (query, key) token axis: ``"source"`` (``input_ids``) or ``"target"`` (decoder inputs).
        layout: :data:`~lightning_attnviz.capture.kinds.Kind` of the module: ``"token"``, ``"pool"``
            (the latent's row is the overlay), ``"talking_heads"`` (softmax before the head mix), or
            ``"windowed"``, ``"banded"``, ``"block_sparse"`` (made dense: see ``docs/layouts.md``).
        note: what the map shows where that is not plain token attention, for the module table.
        health: max logit, fidelity and value norms (:class:`~lightning_attnviz.capture.probe.Health`).
        grid: ``(rows, cols)`` of the token grid a windowed map lies on (its stage: the resolution
            halves after each patch merging); ``None`` for other layouts.
    """

    key: str
    module: str
    call: int
    weights: Tensor
    visible: Tensor | None
    path: Path
    causal: bool | None
    masked: bool | None
    gqa_groups: int
    scale: float | None
    dropout_p: float
    length: tuple[int, int] = (0, 0)
    block: tuple[int, int] = (1, 1)
    stats: RowStats | None = None
    axes: tuple[str, str] = ("source", "source")
    layout: str = "token"
    note: str | None = None
    health: Health | None = None
    grid: tuple[int, int] | None = None
    pooling: tuple[AxisPlan, AxisPlan] | None = None


def compute(
    pending: Pending,
    max_tokens: int | None = None,
    stats: bool = False,
    sink_keys: int = 1,
    grid: PatchGrid | None = None,
) -> AttentionMap:
    """The weights of one pending call, off the autograd graph, in float32.

    Args:
        pending: what a tap kept.
        max_tokens: pool maps longer than this while computing, by the rule of
            :mod:`~lightning_attnviz.capture.pooling` (``None``: exact).
        stats: accumulate per-row statistics at full resolution.
        sink_keys: how many leading keys the statistics' sink share counts; never pooled.
        grid: the image's patch grid, for a vision model's maps (pooled in squares of patches).

    Raises:
        RuntimeError, ValueError, IndexError, TypeError: the inputs do not make attention weights
        (the caller turns this into a warning naming the module).
    """
    x = pending.inputs
    storage = Storage(max_tokens, stats, sink_keys, grid)
    with torch.inference_mode(False), torch.no_grad():
        result, health = _weights(pending, storage)
    return AttentionMap(
        **{name: getattr(pending, name) for name in _PENDING_META},
        weights=result.weights,
        visible=result.visible,
        length=result.length,
        block=result.block,
        stats=result.stats,
        health=health,
        grid=x.grid if isinstance(x, WindowInputs) else None,
        pooling=result.plans,
    )


# the layouts capture reads itself: the dense map and its health, made by the layout's own module
# (keyed by the inputs' type, which is each reader's first argument's)
_READ: dict[type, Callable[..., tuple[Computed, Health]]] = {
    WindowInputs: window_weights, BandInputs: band_weights, BlockSparseInputs: block_sparse_weights
}


def _weights(pending: Pending, storage: Storage) -> tuple[Computed, Health]:
    """The weights of each kind of inputs, made by the module that knows that kind, and their health."""
    x = pending.inputs
    if isinstance(x, (WindowInputs, BandInputs, BlockSparseInputs)):
        if isinstance(x, WindowInputs):  # a windowed map lies on its stage's grid: pooled in its squares
            storage = replace(storage, grid=stage_grid(storage.grid, x.grid))
        return _READ[type(x)](x, storage, pending.dropout_p)
    probe = _probe(pending, storage.sink_keys)
    result: Computed
    if isinstance(x, SDPAInputs):
        result = sdpa_weights(x.q, x.k, x.mask, x.causal, x.scale, x.gqa, x.q.shape[0], storage, probe)
    elif isinstance(x, MHAInputs):
        result = mha_weights(x, storage, probe)
    elif isinstance(x, ScoresInputs):
        result = scores_weights(x.scores, storage, probe)
    else:
        result = collect_weights(x.weights, storage, x.padded_queries, probe)
    return result, probe.result(x.max_logit if isinstance(x, SoftmaxOutput) else None)


def _probe(pending: Pending, sink_keys: int) -> Probe:
    """What reads the scores as they are computed: max logit, and fidelity where values were kept."""
    x = pending.inputs
    if isinstance(x, SDPAInputs):
        return sdpa_probe(x.q, x.v, x.out, pending.dropout_p, sink_keys)
    if isinstance(x, MHAInputs):
        return mha_probe(x, pending.dropout_p, sink_keys)
    if isinstance(x, SoftmaxOutput):
        return eager_probe(x.values, x.product, sink_keys)
    return Probe(sink_keys=sink_keys)
