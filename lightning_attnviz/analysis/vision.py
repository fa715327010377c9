"""Vision maths over one sample's weights: per-patch maps, rollout, attention distance, images.

A ViT's sequence is ``[prefix tokens..., patches...]`` (see
:class:`~lightning_attnviz.capture.grid.PatchGrid`).
Everything here takes ``(heads, L, L)`` weights (a ``torch.Tensor`` or ``numpy`` array), checks ``L``
against the grid, and returns float64 ``numpy`` arrays.

Which map to draw per layer: :func:`cls_to_patches` when the grid has a prefix token (what the
classifier reads), otherwise :func:`mean_received` (no single query speaks for the image);
:func:`query_patch` is for a chosen patch. Across layers, :func:`rollout` then ``cls_to_patches`` on
its result (``rollout(...)[None]``), or ``mean_received`` on it for a model without prefix tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from lightning_attnviz.capture.grid import PatchGrid

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")


def cls_to_patches(weights: torch.Tensor | np.ndarray, grid: PatchGrid, query: int = 0) -> np.ndarray:
    """Where a prefix token (default: CLS, query 0) looks in the image.

    The CLS token's row is what the classifier reads, so this is the usual "what does the model look
    at" picture. Values are the captured weights, not renormalised: the share a row gives to prefix
    tokens is simply left out (a register that absorbs attention makes the patch map fainter).

    Args:
        query: index of the prefix token whose row is shown, ``0 <= query < grid.prefix_tokens``.

    Raises:
        ValueError: the grid has no prefix tokens (use :func:`mean_received`), ``query`` is out of
            range, or the sequence length does not match the grid.

    Shape:
        weights: ``(..., L, L)``, usually ``(heads, L, L)``; returns ``(..., rows, cols)``.
    """
    w = _weights(weights, grid)
    if grid.prefix_tokens == 0:
        raise ValueError(
            "cls_to_patches needs a prefix token, but the grid has `prefix_tokens=0`; "
            "use mean_received or query_patch"
        )
    if isinstance(query, bool) or not isinstance(query, int) or not 0 <= query < grid.prefix_tokens:
        raise ValueError(f"`query` must be a prefix token index in [0, {grid.prefix_tokens}), got {query!r}")
    return _to_grid(w[..., query, grid.prefix_tokens :], grid)


def mean_received(weights: torch.Tensor | np.ndarray, grid: PatchGrid) -> np.ndarray:
    """Attention each patch receives, averaged over the query patches.

    The picture to draw for a model without a CLS token (``prefix_tokens == 0``, e.g. global average
    pooling): no single row speaks for the whole image, but the patches many queries read stand out.
    Prefix-token queries are excluded so that the map means the same thing with or without a CLS.

    Shape:
        weights: ``(..., L, L)``; returns ``(..., rows, cols)``.
    """
    w = _weights(weights, grid)
    p = grid.prefix_tokens
    return _to_grid(w[..., p:, p:].mean(axis=-2), grid)


def query_patch(weights: torch.Tensor | np.ndarray, grid: PatchGrid, row: int, col: int) -> np.ndarray:
    """Where one chosen patch, at ``(row, col)`` of the grid, attends.

    Raises:
        ValueError: ``row``/``col`` outside the grid, or the sequence length does not match it.

    Shape:
        weights: ``(..., L, L)``; returns ``(..., rows, cols)``.
    """
    w = _weights(weights, grid)
    for name, value, limit in (("row", row, grid.rows), ("col", col, grid.cols)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
            raise ValueError(f"`{name}` must be an int in [0, {limit}), got {value!r}")
    return _to_grid(w[..., grid.prefix_tokens + row * grid.cols + col, grid.prefix_tokens :], grid)


def rollout(
    maps: Sequence[torch.Tensor | np.ndarray],
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    prefix_tokens: int = 1,
) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token's output draws on each input
    token through all layers, counting the residual stream.

    Per layer: fuse the heads (``mean``, ``max`` or ``min``); optionally zero the weakest entries
    (below); add the identity for the residual connection and renormalise every **row** to sum 1;
    then chain the layers, ``A_L · … · A_1``. The widely copied vit-explain code divides by
    ``a.sum(dim=-1)`` without ``keepdim``, which scales columns instead of rows; that is invisible
    with mean fusion and nothing discarded (rows already sum to 1) and wrong otherwise.

    Discarding (``discard_ratio > 0``, vit-explain's noise filter): in each fused matrix, the
    ``floor(discard_ratio * n)`` smallest of the ``n`` entries whose *key* is a patch are set to 0
    (ties broken by position). Entries in the prefix columns (attention *to* CLS/registers) are never
    discarded; vit-explain protects only the CLS→CLS entry, and we protect the whole columns so that a
    CLS or register acting as an attention sink is not cut off.

    Args:
        maps: one sample's weights per layer, in forward order.
        head_fusion: how heads are combined, one of ``"mean"``, ``"max"``, ``"min"``.
        discard_ratio: fraction in ``[0, 1)`` of patch-key entries zeroed per layer.
        prefix_tokens: tokens before the patches, whose columns are protected from discarding.

    Returns:
        float64, rows sum to 1. Row ``prefix + i`` is patch ``i``; row 0 (CLS) reshaped with
        :func:`cls_to_patches` (``rollout(...)[None]``) is the usual rollout picture.

    Shape:
        maps: each ``(heads, L, L)``; returns ``(L, L)``.
    """
    layers = _rollout_layers(maps, head_fusion, discard_ratio, prefix_tokens)
    length = layers[0].shape[-1]
    result = np.eye(length)
    for a in layers:
        fused = getattr(a, head_fusion)(axis=0)  # (L, L)
        if discard_ratio > 0:
            fused = _discard(fused, discard_ratio, prefix_tokens)
        fused = fused + np.eye(length)  # the residual stream carries each token on
        fused = fused / fused.sum(axis=-1, keepdims=True)  # rows, not columns
        result = fused @ result
    return result


def _rollout_layers(
    maps: Sequence[torch.Tensor | np.ndarray], head_fusion: str, discard_ratio: float, prefix_tokens: int
) -> list[np.ndarray]:
    """:func:`rollout`'s arguments checked, before any maths, and its maps as arrays."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"`head_fusion` must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if isinstance(discard_ratio, bool) or not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"`discard_ratio` must be a float in [0, 1), got {discard_ratio!r}")
    if len(maps) == 0:
        raise ValueError("`maps` must hold at least one layer's weights, got none")
    layers = [_numpy(layer) for layer in maps]  # each (heads, L, L)
    length = layers[0].shape[-1]
    for index, a in enumerate(layers):
        if a.ndim != 3 or a.shape[-2:] != (length, length):
            raise ValueError(
                f"`maps[{index}]` must be one sample's (heads, L, L) weights with the L={length} of "
                f"maps[0], got shape {tuple(a.shape)}"
                + ("; take one sample, e.g. w[0]" if a.ndim == 4 else "")
            )
    if (
        isinstance(prefix_tokens, bool)
        or not isinstance(prefix_tokens, int)
        or not 0 <= prefix_tokens <= length
    ):
        raise ValueError(f"`prefix_tokens` must be an int in [0, {length}], got {prefix_tokens!r}")
    return layers


def mean_attention_distance(weights: torch.Tensor | np.ndarray, grid: PatchGrid) -> np.ndarray:
    """Mean attention distance per head, in pixels (Dosovitskiy et al. 2021, Fig. 7): how far a head
    looks, local (small) or global (about a third of the image side).

    For each query patch: the distance between its centre and every key patch's centre, weighted by
    the attention; then the mean over query patches. Prefix tokens have no position, so they are
    dropped as queries and as keys, and each query row is renormalised over the patch keys first:
    otherwise a head that sends most of its attention to CLS would look "local" only because its
    weights sum to little. Rows with no weight on any patch are left out of the mean (a head with no
    such row gives NaN).

    Shape:
        weights: ``(..., L, L)``, usually ``(heads, L, L)``; returns ``(...)``, usually ``(heads,)``.
    """
    w = _weights(weights, grid)
    p = grid.prefix_tokens
    patches = w[..., p:, p:]  # (..., N, N)
    mass = patches.sum(axis=-1)  # (..., N)
    centers = grid.centers()
    dist = np.linalg.norm(centers[:, None, :] - centers[None, :, :], axis=-1)  # (N, N) pixels
    valid = mass > 0
    per_query = np.where(valid, (patches * dist).sum(axis=-1) / np.where(valid, mass, 1.0), 0.0)
    with np.errstate(invalid="ignore"):  # 0 / 0 -> NaN for a head with no valid row
        return per_query.sum(axis=-1) / valid.sum(axis=-1)




def _numpy(weights: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(weights, torch.Tensor):
        return weights.detach().to("cpu", torch.float64).numpy()
    return np.asarray(weights, dtype=np.float64)


def _weights(weights: torch.Tensor | np.ndarray, grid: PatchGrid) -> np.ndarray:
    """``weights`` as float64 numpy, with a square last pair of axes that matches ``grid``."""
    w = _numpy(weights)
    if w.ndim < 2 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"`weights` must be self-attention (..., L, L), got shape {tuple(w.shape)}")
    grid.split(w.shape[-1])
    return w


def _to_grid(patch_values: np.ndarray, grid: PatchGrid) -> np.ndarray:
    return patch_values.reshape(*patch_values.shape[:-1], grid.rows, grid.cols)  # (..., rows, cols)


def _discard(fused: np.ndarray, ratio: float, prefix_tokens: int) -> np.ndarray:
    """Zero the ``floor(ratio * n)`` smallest of the ``n`` patch-key entries of ``(L, L)``."""
    eligible = fused[:, prefix_tokens:]
    count = math.floor(ratio * eligible.size)
    if count == 0:
        return fused
    flat = eligible.ravel().copy()
    flat[np.argsort(flat, kind="stable")[:count]] = 0.0
    out = fused.copy()
    out[:, prefix_tokens:] = flat.reshape(eligible.shape)
    return out
