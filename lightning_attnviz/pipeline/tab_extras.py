"""The Attention tab's run-level records of a capture, beside its maps: the overview (every layer × head
stats matrix the capture drew) and markers (texts attached to the step, such as a phase change).

The overview is written from the very matrices of the ``attention/stats/<metric>`` pictures (carried
by :class:`~lightning_attnviz.render.stats.StatsPicture`), so a metric drawn there shows in the tab's
overview with no change to the tab.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lightning_attnviz.render.maps import Picture
from lightning_attnviz.render.stats import StatsPicture
from lightning_attnviz.sinks.base import Outputs
from lightning_attnviz.sinks.tags import Tags
from lightning_attnviz.tab.overview import MatrixMetric, encode_overview
from lightning_attnviz.tab.record import Marker, encode_markers


def add_overview(out: Outputs, tags: Tags, pictures: Sequence[Picture], epoch: int | None) -> None:
    """The overview record of the stats matrices among ``pictures``, added to ``out`` (none: nothing).

    Matrices drawn over other layers than the first (a metric known for a subset of layers) keep
    their own rows: each row is placed by layer name in the union, first-seen order.
    """
    drawn = [
        (p.values, p.layers, p.info)
        for p in pictures
        if isinstance(p, StatsPicture) and p.values is not None and p.info is not None
    ]
    if not drawn:
        return
    layers = list(dict.fromkeys(name for _, rows, _ in drawn for name in rows))
    metrics = [
        MatrixMetric(
            m.name, m.title, m.meaning, _placed(values, rows, layers), m.low, m.high, m.ends, m.decimals
        )
        for values, rows, m in drawn
    ]
    out.tab_extra.append(("overview", tags.tab_overview, encode_overview(out.step, epoch, layers, metrics)))


def _placed(values: np.ndarray, rows: Sequence[str], layers: list[str]) -> np.ndarray:
    """``values`` (one row per name in ``rows``) on the rows of ``layers``; NaN rows for the others.

    Shape:
        values: ``(len(rows), heads)``; returns ``(len(layers), heads)``.
    """
    out = np.full((len(layers), values.shape[1]), np.nan)
    for i, name in enumerate(rows):
        out[layers.index(name)] = values[i]
    return out


def add_markers(out: Outputs, tags: Tags, texts: Sequence[str]) -> None:
    """Markers at the capture's step (e.g. "phase change: layer 3 heads 2, 5 became induction heads"),
    drawn on the Attention tab's step slider; call once per capture with every text of the step.

    Raises:
        ValueError: an empty text.
    """
    if texts:
        blob = encode_markers([Marker(out.step, text) for text in texts])
        out.tab_extra.append(("markers", tags.tab_markers, blob))
