"""The overview record: per capture, the layer × head matrix of every metric the ``attention/stats/<metric>``
pictures show, as UTF-8 JSON (NaN as null), written once per capture under the tab's plugin.

The pipeline encodes it from the very matrices the stats pictures are drawn from, so a metric added
there appears in the tab's overview with no change to the tab; the tab reads every kept step of it
at once (``records`` route) for the overview and the per-head line over steps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lightning_attnviz.tab.record import read_json

OVERVIEW_FORMAT = "attnviz-overview/1"


@dataclass(frozen=True)
class MatrixMetric:
    """One metric's layer × head matrix as the overview shows it (the ``attention/stats/<metric>``
    picture's matrix and its legend).

    Attributes:
        low, high: the colour range, or None for ``0 … the largest value``.
        ends: words at the low and high end of the colour bar.
        decimals: digits shown after the point.

    Shape:
        values: ``(layers, heads)``; NaN where a layer has fewer heads or no value.
    """

    name: str
    title: str
    meaning: str
    values: np.ndarray
    low: float | None = None
    high: float | None = None
    ends: tuple[str, str] = ("", "")
    decimals: int = 2


@dataclass(frozen=True)
class Overview:
    """The overview of one capture: every metric's layer × head matrix, layers in forward order."""

    step: int
    epoch: int | None
    layers: tuple[str, ...]
    metrics: tuple[MatrixMetric, ...]


def encode_overview(
    step: int, epoch: int | None, layers: Sequence[str], metrics: Sequence[MatrixMetric]
) -> bytes:
    """The overview record of one capture, as UTF-8 JSON (NaN as null).

    Raises:
        ValueError: a metric's matrix has another number of rows than ``layers``.
    """
    entries = []
    for m in metrics:
        values = np.asarray(m.values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != len(layers):
            raise ValueError(
                f"`metrics[{m.name!r}].values` must be (layers={len(layers)}, heads), got {values.shape}"
            )
        rows = [[round(float(v), 6) if math.isfinite(v) else None for v in row] for row in values]
        entries.append({
            "name": m.name, "title": m.title, "meaning": m.meaning, "low": m.low, "high": m.high,
            "ends": list(m.ends), "decimals": int(m.decimals), "values": rows,
        })  # fmt: skip
    record = {
        "format": OVERVIEW_FORMAT,
        "step": int(step),
        "epoch": None if epoch is None else int(epoch),
        "layers": [str(layer) for layer in layers],
        "metrics": entries,
    }
    return json.dumps(record, ensure_ascii=False, allow_nan=False).encode()


def decode_overview(blob: bytes) -> Overview:
    """Reads :func:`encode_overview`'s record. Raises ValueError for another format."""
    record = read_json(blob, OVERVIEW_FORMAT)
    metrics = tuple(
        MatrixMetric(
            name=m["name"],
            title=m["title"],
            meaning=m["meaning"],
            values=np.array(
                [[np.nan if v is None else v for v in row] for row in m["values"]], np.float64
            ).reshape(len(record["layers"]), -1),
            low=m["low"],
            high=m["high"],
            ends=tuple(m["ends"]),
            decimals=m["decimals"],
        )
        for m in record["metrics"]
    )
    return Overview(record["step"], record["epoch"], tuple(record["layers"]), metrics)
