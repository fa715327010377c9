"""Records and expected values for the node unit tests (tests/js), made by the Python encoder itself.

Usage: ``python tests/js/make_fixtures.py <dir>``; writes ``<name>.bin`` records and ``expected.json``:
each record's decoding by :func:`lightning_attnviz.tab.record.decode_map`, the pictures' colour tables and
where :func:`lightning_attnviz.render.scale.levels` places decoded maps on the colour scale (exact and
pooled by the rule of :mod:`lightning_attnviz.capture.blocks`), that rule's blocks, labels and words for
the axes the tab pools on screen (records pooled already included), an overview record, and a record in
the previous format.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import torch

from lightning_attnviz.analysis.views import AttentionView, pool_view
from lightning_attnviz.capture.blocks import AxisPlan, plan_axis, plan_map, pool, pooling_note
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.pipeline.plan import screen_blocks
from lightning_attnviz.render.scale import _DIFF_LUT, _LUT, levels
from lightning_attnviz.tab.overview import MatrixMetric, encode_overview
from lightning_attnviz.tab.record import AxisBlocks, decode_map, encode_map


def _records() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    q = 7
    words = ["<s>", "i", "said", "i", "\u202etxt.exe", "i", "<pad>"]
    causal = np.tril(np.ones((q, q), bool))[None]
    causal[..., -1] = False
    causal[..., 0] = True
    weights = rng.random((3, q, q)).astype(np.float32) * causal
    weights /= weights.sum(-1, keepdims=True)
    weights[2, 4, 1] = np.nan
    per_head = rng.random((2, 3, 5)) > 0.4
    vision = rng.random((2, 5, 5)).astype(np.float32)
    vision /= vision.sum(-1, keepdims=True)
    long = rng.random((1, 256, 256)).astype(np.float32) ** 8  # peaked rows, many small weights
    long_visible = np.tril(np.ones((256, 256), bool))[None]
    long = long * long_visible
    long /= long.sum(-1, keepdims=True)
    return {
        "long": encode_map(
            layer="long",
            sample=0,
            step=5,
            epoch=2,
            weights=long,
            visible=long_visible,
            q_labels=[str(i) for i in range(256)],
            k_labels=[str(i) for i in range(256)],
        ),
        "version2": _version2(),
        "causal": encode_map(
            layer="blocks.1.attn",
            sample=0,
            step=12,
            weights=weights,
            visible=causal,
            q_labels=words,
            k_labels=words,
            note="pooled nothing",
        ),
        "per_head": encode_map(
            layer="x",
            sample=1,
            step=3,
            weights=rng.random((2, 3, 5)).astype(np.float32),
            visible=per_head,
            q_labels=list("abc"),
            k_labels=list("vwxyz"),
        ),
        "pooled_text": _pooled_text(rng),
        "vision": encode_map(
            layer="vit.blocks.0",
            sample=0,
            step=1,
            weights=vision,
            visible=None,
            q_labels=["CLS", "p0", "p1", "p2", "p3"],
            k_labels=["CLS", "p0", "p1", "p2", "p3"],
            image=rng.random((4, 6, 3)),
            grid=(2, 2),
            prefix_tokens=1,
        ),
    }


def _version2() -> bytes:
    """A record as attnviz/2 wrote it: linear bytes, no epoch, no floors."""
    header = {"format": "attnviz/2", "step": 4, "layer": "old", "sample": 0, "heads": 1, "q": 2, "k": 2,
              "scales": [0.8], "q_labels": ["a", "b"], "k_labels": ["a", "b"], "note": "", "mask": None,
              "image": None}  # fmt: skip
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(4, "little") + encoded + bytes([254, 0, 127, 255])


def _pooled_text(rng: np.random.Generator) -> bytes:
    """A 300-token causal map the pipeline pooled to 100 cells before the tab got it (as
    ``dashboard_tokens`` pools), with its blocks as the pipeline writes them."""
    n = 300
    visible = np.tril(np.ones((n, n), bool))[None]
    weights = (rng.random((2, n, n)).astype(np.float32) ** 6) * visible
    weights /= weights.sum(-1, keepdims=True)
    labels = [f"w{i}" for i in range(n)]
    view = pool_view(AttentionView("text", 0, weights, visible, labels, labels), 100, None, keep=2)
    return encode_map(layer="text", sample=0, step=9, weights=view.weights, visible=view.visible,
                      q_labels=view.q_labels, k_labels=view.k_labels, note=view.note,
                      blocks=screen_blocks(view, None, 2))  # fmt: skip


def _places(blob: bytes, limit: int | None = None) -> list:
    """Where the pictures' scale places the decoded head mean, or (``limit``) the mean pooled by the rule
    as the tab pools a map wider than its panel (the record's own blocks, query rows weighted by the
    tokens they stand for): query rows averaged, keys summed, a cell visible where any of its block is,
    pooled keys placed per token."""
    record = decode_map(blob)
    mean = record.weights.mean(axis=0)
    visible = None if record.visible is None else record.visible.any(axis=0)
    told = record.blocks or (AxisBlocks(1), AxisBlocks(1))
    rows, keys = (None if b.sizes is None else np.asarray(b.sizes) for b in told)
    if limit is not None:
        q, k = (_screen_plan(record, axis, limit) for axis in (0, 1))
        weights = None if rows is None else torch.from_numpy(rows)
        mean = pool(torch.from_numpy(mean.copy()), q, k, weights).numpy()
        if visible is not None:
            visible = pool(torch.from_numpy(visible.copy()), q, k).numpy()
        keys = np.bincount(k.group, weights=np.ones(k.length) if keys is None else keys)
    t = levels(mean, visible, keys)  # pooled keys coloured per token, as the pictures colour them
    return [None if np.isnan(v) else float(v) for v in t.ravel()]


def _screen_plan(record: object, axis: int, limit: int) -> AxisPlan:
    """The rule's plan of a record's axis at ``limit``, from the facts the record carries."""
    told = record.blocks[axis] if record.blocks else AxisBlocks(1)
    length = (record.q, record.k)[axis]
    grid = None if told.grid is None else PatchGrid(told.grid[:2], told.grid[2], 1)
    return plan_axis(length, limit, grid, told.alone)


# Axes the tab pools on screen: (tokens, patch grid and prefix or None, sink tokens, the limit the
# pipeline pooled the record to or None, the on-screen limit).
_AXES = {
    "text_2048": (2048, None, 1, None, 512),
    "text_sinks": (2048, None, 4, None, 600),
    "text_pooled": (4096, None, 1, 512, 200),
    "vit_b16": (197, ((14, 14), 1), 1, None, 60),
    "vit_384": (577, ((24, 24), 1), 1, None, 160),
    "edges": (50, ((7, 7), 1), 1, None, 10),
    "no_cls": (400, ((20, 20), 0), 1, None, 90),
    "registers": (261, ((16, 16), 5), 1, None, 80),
    "vit_pooled": (1025, ((32, 32), 1), 1, 512, 100),
    "odd_pooled": (1 + 27 * 27, ((27, 27), 1), 1, 300, 60),
}


def _axes() -> dict:
    """Per axis: what the record carries (its labels and blocks) and what the rule gives from the tokens
    as they ran (groups over the record's cells, labels, words)."""
    out = {}
    for name, (length, grid_of, keep, stored, limit) in _AXES.items():
        grid = None if grid_of is None else PatchGrid(grid_of[0], grid_of[1], 16)
        tokens = grid.labels() if grid is not None else [f"t{i}" for i in range(length)]
        base = plan_axis(length, stored, grid, keep)
        labels = base.labels(tokens)
        zeros = np.zeros((1, base.blocks, base.blocks), np.float32)
        pooling = (base, base) if base.pooled else None
        view = AttentionView("x", 0, zeros, None, labels, labels, pooling=pooling)
        blocks = screen_blocks(view, grid, keep)[0]
        step = plan_axis(base.blocks, limit, base.cells, base.alone if base.pooled else keep)
        whole = base.then(step)
        out[name] = {
            "length": base.blocks, "limit": limit, "labels": labels, "blocks": blocks.to_json(),
            "group": step.group.tolist(), "block_labels": whole.labels(tokens), "describe": whole.describe(),
        }  # fmt: skip
    return out


def _overview() -> bytes:
    values = np.array([[0.9, 0.8, np.nan], [0.2, 0.1, 0.3]])
    metric = MatrixMetric("entropy_norm", "normalised attention entropy", "0 = one key, 1 = uniform",
                          values, 0.0, 1.0, ("one key", "uniform"), 2)  # fmt: skip
    other = MatrixMetric("distance", "mean attention distance", "positions", values * 10, None, None)
    return encode_overview(7, 1, ["a.0", "a.1"], [metric, other])


def _expected(blob: bytes) -> dict:
    record = decode_map(blob)
    return {
        "epoch": record.epoch,
        "step": record.step,
        "layer": record.layer,
        "heads": record.heads,
        "q": record.q,
        "k": record.k,
        "q_labels": list(record.q_labels),
        # JSON has no NaN: null stands for it
        "weights": [None if np.isnan(w) else float(w) for w in record.weights.ravel()],
        "visible": None if record.visible is None else record.visible.astype(int).ravel().tolist(),
        "image": None if record.image is None else record.image.ravel().tolist(),
    }


def _rgb(cmap: matplotlib.colors.Colormap, x: float) -> list[int]:
    return [int(c) for c in cmap(x, bytes=True)[:3]]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    expected = {}
    records = _records()
    for name, blob in records.items():
        (out / f"{name}.bin").write_bytes(blob)
        expected[name] = _expected(blob)
    expected["viridis"] = _LUT.tolist()  # the tables the pictures are drawn with
    expected["rdbu"] = _DIFF_LUT.tolist()
    expected["viridis_matplotlib"] = [_rgb(matplotlib.colormaps["viridis"], i) for i in (0, 128, 255)]
    expected["places"] = {"causal": _places(records["causal"]), "long": _places(records["long"]),
                          "long_pooled": _places(records["long"], 100),
                          "pooled_text": _places(records["pooled_text"]),
                          "pooled_text_pooled": _places(records["pooled_text"], 40)}  # fmt: skip
    expected["axes"] = _axes()
    q, k = plan_map(256, 256, 100)
    expected["note"] = pooling_note(q, k)
    (out / "overview.json").write_bytes(_overview())
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
