"""How the tab may pool each axis of a map record on screen (the ``blocks`` entry of its header):
the facts ``static/blocks.js`` needs to follow the rule the pictures and captures follow
(``capture/blocks.py``) when a map has more cells than its panel has pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def count(value: Any) -> int:
    """``value`` if it is an int >= 0 (a record header's counts), else a ValueError."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a count in an attnviz record header must be an int >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class AxisBlocks:
    """One axis of a record, as the tab pools it on screen.

    Attributes:
        alone: leading cells never pooled (prefix and sink tokens).
        grid: ``(rows, cols, prefix)`` when the cells are an image's patch grid (pooled in squares).
        sizes: tokens per cell when the record is pooled already (its query rows are weighted by them);
            ``None``: one token each.
        factor: side of the squares the record's patches were pooled in (1: not pooled).
    """

    alone: int
    grid: tuple[int, int, int] | None = None
    sizes: tuple[int, ...] | None = None
    factor: int = 1

    def check(self, cells: int) -> AxisBlocks:
        """``self`` if it describes an axis of ``cells`` cells (as record.js checks), else a ValueError."""
        if self.alone > cells or (self.sizes is not None and len(self.sizes) != cells):
            given = len(self.sizes or ())
            raise ValueError(f"`blocks` of {self.alone} cells alone or {given} sizes for {cells} cells")
        if self.grid is not None and self.grid[2] + self.grid[0] * self.grid[1] != cells:
            raise ValueError(f"a `blocks` grid {self.grid} for an axis of {cells} cells")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"alone": int(self.alone), "grid": None if self.grid is None else [int(g) for g in self.grid],
                "sizes": None if self.sizes is None else [int(n) for n in self.sizes],
                "factor": int(self.factor)}  # fmt: skip

    @classmethod
    def from_json(cls, told: Any, cells: int) -> AxisBlocks:
        """One axis of a header's ``blocks``, every count checked; a ValueError otherwise."""
        try:
            grid, sizes = told["grid"], told["sizes"]
            return cls(
                count(told["alone"]),
                None if grid is None else (count(grid[0]), count(grid[1]), count(grid[2])),
                None if sizes is None else tuple(map(count, sizes)),
                count(told["factor"]),
            ).check(cells)
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(f"malformed `blocks` in a record header ({type(err).__name__})") from err


def read_blocks(told: Any, q: int, k: int) -> tuple[AxisBlocks, AxisBlocks] | None:
    """A header's ``blocks`` for a ``q`` × ``k`` map (``None``: a record written before they were)."""
    if not told:
        return None
    if not isinstance(told, dict):
        raise ValueError(f"`blocks` in an attnviz record header must be an object, got {type(told).__name__}")
    return AxisBlocks.from_json(told.get("q"), q), AxisBlocks.from_json(told.get("k"), k)
