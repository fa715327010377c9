"""Which tokens pool together: the one rule every stored map and every picture follows.

For an axis longer than its limit:

- prefix tokens (CLS, registers, distillation) and the sink tokens (the first ``keep`` tokens) are
  never pooled with anything: each stays a block of its own;
- an image's patch grid is pooled spatially, in ``f×f`` squares of patches (``f = 2`` unless that is
  not enough), aligned to the top-left corner (squares at the right and bottom edges may be smaller),
  labelled by patch ranges such as ``r0-1,c2-3``;
- any other axis is pooled in contiguous token blocks whose sizes differ by at most one token,
  labelled by position ranges such as ``12–15``.

Query rows are averaged over their block and keys summed (:func:`pool`), so pooled rows still sum to 1
and read as "how much of this block's attention goes to that block". The capture pools by it while
computing (beyond ``store_tokens``), the views for pictures and the tab (beyond ``max_tokens`` and
``dashboard_tokens``), and the pictures' own bound (``render.scale``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch
from torch import Tensor

from lightning_attnviz.capture.grid import PatchGrid

# The most rows/columns a picture draws: longer axes are pooled by the rule first. One value for every
# picture (render.scale bounds its inputs by it) and the callback's `max_tokens` (which may not exceed it).
PICTURE_CELLS = 128


@dataclass(frozen=True, eq=False)
class AxisPlan:
    """How one axis of a map is pooled (see the module docstring for the rule): token ``t`` goes to
    block ``group[t]``, blocks numbered in the order of their first token.

    Attributes:
        group: int64 ``(length,)``.
        grid: the axis's patch grid, when the axis is an image's tokens.
        factor: side ``f`` of the squares the patches were pooled in (1: patches not pooled).
    """

    group: np.ndarray
    grid: PatchGrid | None = None
    factor: int = 1

    @property
    def length(self) -> int:
        return len(self.group)

    # Derived once per plan (a plan never changes): views, pictures and records ask for them often.
    @cached_property
    def blocks(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 0

    @cached_property
    def sizes(self) -> np.ndarray:
        """Tokens per block, ``(blocks,)``."""
        return np.bincount(self.group, minlength=self.blocks)

    @property
    def pooled(self) -> bool:
        return self.blocks < self.length

    @cached_property
    def alone(self) -> int:
        """Leading tokens that are blocks of their own (prefix and sink tokens)."""
        n = min(self.blocks, self.length)
        own = (self.group[:n] == np.arange(n)) & (self.sizes[:n] == 1)
        return n if own.all() else int(np.argmin(own))

    @property
    def cells(self) -> PatchGrid | None:
        """The pooled axis as a patch grid of its own (prefix tokens, then ``f×f`` squares of patches
        as larger patches), when it is one; ``None`` otherwise."""
        grid, f = self.grid, self.factor
        if grid is None:
            return None
        shape = (math.ceil(grid.rows / f), math.ceil(grid.cols / f))
        if self.blocks != grid.prefix_tokens + shape[0] * shape[1] or self.alone < grid.prefix_tokens:
            return None
        return PatchGrid(shape, grid.prefix_tokens, (grid.patch_size[0] * f, grid.patch_size[1] * f))

    def then(self, other: AxisPlan) -> AxisPlan:
        """This pooling followed by ``other``, a plan over this one's blocks."""
        if other.length != self.blocks:
            raise ValueError(f"a plan over {self.blocks} blocks is needed, got one over {other.length}")
        factor = self.factor * other.factor if other.grid is not None else self.factor
        return AxisPlan(other.group[self.group], self.grid, factor)

    def labels(self, tokens: Sequence[str] | None = None) -> list[str]:
        """One label per block: a token alone keeps its own (``tokens``, else the grid's, else its
        position); a square of patches names its rows and columns (``r0-1,c2-3``, ``r6,c6`` for a
        one-patch square at an edge); any other block its positions (``12–15``)."""
        key = tuple(tokens) if tokens is not None and len(tokens) == self.length else None
        if key not in self._labels:  # every picture of a capture asks again for the same labels
            self._labels[key] = self._label(key)
        return list(self._labels[key])

    @cached_property
    def _labels(self) -> dict[tuple[str, ...] | None, list[str]]:
        return {}

    def _label(self, tokens: tuple[str, ...] | None) -> list[str]:
        own = list(tokens) if tokens is not None else None
        grid = self.grid
        if own is None:
            own = grid.labels() if grid is not None else [str(i) for i in range(self.length)]
        order = np.argsort(self.group, kind="stable")
        members = np.split(order, np.cumsum(self.sizes)[:-1])
        squares = grid is not None and self.factor > 1
        alone = self.alone
        out = []
        for m in members:
            if len(m) == 1 and (not squares or m[0] < alone):  # a square at the edge stays a square
                out.append(str(own[m[0]]))
            elif grid is not None and m.min() >= grid.prefix_tokens:
                r, c = np.divmod(m - grid.prefix_tokens, grid.cols)
                out.append(f"r{_span(r, '-')},c{_span(c, '-')}")
            else:
                out.append(_span(m, "–"))
        return out

    def describe(self) -> str:
        """How this axis was pooled, in words (for a picture's note)."""
        alone, grid = self.alone, self.grid
        prefix = grid.prefix_tokens if grid is not None else 0
        if alone == 0:
            kept = ""
        elif grid is not None and alone == prefix == 1:
            kept = "CLS kept alone, "
        elif grid is not None and alone == prefix:
            kept = f"the {alone} prefix tokens kept alone, "
        else:
            kept = f"token{'s' if alone > 1 else ''} {_span(np.arange(alone), '–')} kept alone, "
        sizes = self.sizes[alone:]
        if grid is not None and self.factor > 1:
            rest = f"patches in {self.factor}×{self.factor} squares"
        else:
            rest = f"the rest in blocks of {_span(sizes, '–')} tokens" if len(sizes) else ""
        return f"{self.length}→{self.blocks} ({kept}{rest})".replace(", )", ")")


def _span(values: np.ndarray, dash: str) -> str:
    low, high = int(np.min(values)), int(np.max(values))
    return str(low) if low == high else f"{low}{dash}{high}"


def plan_axis(length: int, limit: int | None, grid: PatchGrid | None = None, keep: int = 1) -> AxisPlan:
    """The pooling of an axis of ``length`` tokens to at most ``limit`` blocks (``None``: none).

    Args:
        grid: the image's patch grid; used when ``length`` is its length.
        keep: leading tokens never pooled (the sink tokens); a grid's prefix tokens always are.

    Plans are kept (a plan never changes): every picture of every capture asks for the same few,
    and a kept plan keeps its blocks, sizes and labels.
    """
    grid = grid if grid is not None and grid.length == length else None
    return _plan_axis(int(length), None if limit is None else int(limit), grid, int(keep))


@lru_cache(maxsize=256)
def _plan_axis(length: int, limit: int | None, grid: PatchGrid | None, keep: int) -> AxisPlan:
    if limit is None or length <= limit:
        return AxisPlan(np.arange(length), grid)
    alone = min(length, max(keep, grid.prefix_tokens if grid is not None else 0))
    if grid is None:
        rest = length - alone
        if rest == 0:
            return AxisPlan(np.arange(length))
        size = math.ceil(rest / max(1, limit - alone))
        count = math.ceil(rest / size)
        sizes = np.full(count, rest // count) + (np.arange(count) < rest % count)  # differ by ≤ 1
        return AxisPlan(np.concatenate([np.arange(alone), alone + np.repeat(np.arange(count), sizes)]))
    f = 2
    while alone + math.ceil(grid.rows / f) * math.ceil(grid.cols / f) > limit and f < max(grid.grid):
        f += 1
    r, c = np.divmod(np.arange(grid.patches), grid.cols)
    raw = np.concatenate([np.arange(grid.prefix_tokens), length + (r // f) * grid.cols + c // f])
    raw[:alone] = np.arange(alone)  # sink tokens beyond the prefix: patches kept alone
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return AxisPlan(rank[inverse], grid, f)


def plan_map(
    q_len: int, k_len: int, limit: int | None, grid: PatchGrid | None = None, keep: int = 1
) -> tuple[AxisPlan, AxisPlan]:
    """The plans of a ``(q_len, k_len)`` map's query and key axes."""
    return plan_axis(q_len, limit, grid, keep), plan_axis(k_len, limit, grid, keep)


def pooling_note(q: AxisPlan, k: AxisPlan) -> str:
    """The one sentence a pooled picture or tab record says about its pooling ("" when not pooled)."""
    if not q.pooled and not k.pooled:
        return ""
    if q.pooled and k.pooled and q.describe() == k.describe():
        what = f"{q.describe()} per side"
    else:
        what = "; ".join(f"{name} {p.describe()}" for name, p in (("queries", q), ("keys", k)) if p.pooled)
    return f"pooled {what}: query rows averaged, keys summed"


def pool(t: Tensor, q: AxisPlan, k: AxisPlan, rows: Tensor | None = None) -> Tensor:
    """``(..., q_len, k_len)`` pooled by the plans: keys summed, query rows averaged over the real rows
    of a block (``rows``: how many original rows each input row stands for, when it is itself pooled);
    bool maps: any.

    Shape:
        t: ``(..., q.length, k.length)``; returns ``(..., q.blocks, k.blocks)``.
    """
    is_bool = t.dtype == torch.bool
    x = t.double()
    summed = x.new_zeros((*x.shape[:-1], k.blocks)).index_add_(-1, block_index(k.group, x.device), x)
    counts = torch.ones(q.length, dtype=torch.float64) if rows is None else rows.double().cpu()
    weighted = summed * counts.to(x.device)[:, None]
    out = weighted.new_zeros((*x.shape[:-2], q.blocks, k.blocks)).index_add_(
        -2, block_index(q.group, x.device), weighted
    )
    if is_bool:
        return out > 0
    total = torch.zeros(q.blocks, dtype=torch.float64).index_add_(0, block_index(q.group, "cpu"), counts)
    return out / total.to(x.device)[:, None]


def block_index(group: np.ndarray, device: torch.device | str) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(group, dtype=np.int64)).to(device)
