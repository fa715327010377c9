"""Records and expected values for the node unit tests (tests/js), made by the Python encoder itself.

Usage: ``python tests/js/make_fixtures.py <dir>``; writes ``<name>.bin`` records and ``expected.json``
(each record's decoding by :func:`lightning_attnviz.record.decode_map`, and matplotlib's viridis).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

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
    return {
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


def _expected(blob: bytes) -> dict:
    record = decode_map(blob)
    return {
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
    for name, blob in _records().items():
        (out / f"{name}.bin").write_bytes(blob)
        expected[name] = _expected(blob)
    cmap = matplotlib.colormaps["viridis"]
    probes = [0, 1, 64, 127, 128, 200, 254, 255]
    expected["viridis"] = {str(i): _rgb(cmap, i) for i in probes}
    # the colour matplotlib gives a value on a 0–1 scale: the tab must pick the same entry
    values = [0.0, 0.001, 0.25, 0.5, 0.7, 0.999, 1.0]
    expected["viridis_values"] = [[v, _rgb(cmap, v)] for v in values]
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
