"""Records and expected values for the node unit tests (tests/js), made by the Python encoder itself.

Usage: ``python tests/js/make_fixtures.py <dir>``; writes ``<name>.bin`` records and ``expected.json``:
each record's decoding by :func:`lightning_attnviz.tab.record.decode_map`, the pictures' colour tables and
where :func:`lightning_attnviz.render.scale.levels` places decoded maps on the colour scale (exact and
block-pooled as the pictures pool long maps), an overview record, and a record in the previous format.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

from lightning_attnviz.render.scale import _DIFF_LUT, _LUT, levels
from lightning_attnviz.tab.overview import MatrixMetric, encode_overview
from lightning_attnviz.tab.record import decode_map, encode_map


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


def _places(blob: bytes, block: int = 1) -> list:
    """Where the pictures' scale places the decoded head mean, or (``block``) the mean pooled in
    uniform ``block`` × ``block`` squares as the tab shows a map wider than its panel: query rows
    averaged, keys summed, a cell visible where any of its block is."""
    record = decode_map(blob)
    mean = record.weights.mean(axis=0)
    visible = None if record.visible is None else record.visible.any(axis=0)
    if block > 1:
        q, k = mean.shape
        mean = mean.reshape(q // block, block, k // block, block).sum(-1).mean(-2)
        if visible is not None:
            visible = visible.reshape(q // block, block, k // block, block).any(axis=(1, 3))
    t = levels(mean, visible)
    return [None if np.isnan(v) else float(v) for v in t.ravel()]


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
                          "long_pooled": _places(records["long"], block=2)}  # fmt: skip
    (out / "overview.json").write_bytes(_overview())
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
