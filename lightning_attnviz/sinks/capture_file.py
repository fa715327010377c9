"""Saved captures: ``attention_captures/step_<step>.npz``, written by the monitor, read by the CLI.

Format ``lightning_attnviz.capture/3``, a numpy ``.npz`` archive holding

- ``meta``: a JSON string: format, step, epoch, per view its sample, layer, labels, note and layout
  (and, for a map pooled while capturing, the squares' side ``factor`` per axis), for vision runs the
  patch grid (``grid``, ``prefix_tokens``, ``patch_size``), what the pictures are drawn with
  (``pictures``: plot kinds, ``max_tokens``, the tokens never pooled, heads, rollout settings), the
  samples' token ``labels``, and the relevance maps' description;
- ``w<n>``: float16 weights ``(heads, q, k)`` of view ``n``, the map as stored (whole up to
  ``store_tokens``); ``v<n>``: bool visibility, when masked; ``gq<n>``, ``gk<n>``: int32, the block of
  each query and key token, when the map was pooled while capturing;
- ``img<s>``: uint8 ``(H, W, 3)`` image of sample ``s`` (vision runs), so overlays and rollout can be
  drawn again from the file alone;
- ``rel<n>``: float32 ``(L, L)`` relevance matrix ``n`` (``relevance=True``).

The monitor draws from exactly what is saved (float16 maps, uint8 images), so the CLI's pictures are
the monitor's, pixel for pixel.

Reading never trusts the file: the archive's members are size-checked before they are read, the
metadata is validated, and every problem is a :class:`CaptureFileError` naming the file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.capture.blocks import AxisPlan
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.relevance import RelevanceMap
from lightning_attnviz.render.plots import PictureSettings

CAPTURE_FORMAT = "lightning_attnviz.capture/3"
READABLE_FORMATS = ("lightning_attnviz.capture/1", "lightning_attnviz.capture/2", CAPTURE_FORMAT)
MAX_MEMBER_BYTES = 512 << 20  # an uncompressed array larger than this is refused (zip bombs)
MAX_META_BYTES = 16 << 20


class CaptureFileError(ValueError):
    """A saved capture that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class SavedCapture:
    """One saved capture. ``pictures`` is ``None`` for files older than format 3 (whose maps are the
    pictures' maps, already pooled)."""

    views: list[AttentionView]
    step: int
    epoch: int
    grid: PatchGrid | None = None
    images: tuple[np.ndarray, ...] = ()  # uint8 (H, W, 3) per sample
    pictures: PictureSettings | None = None
    labels: tuple[tuple[str, ...] | None, ...] = ()  # per sample, the source tokens
    relevance: tuple[RelevanceMap, ...] = ()


def stored_image(image: np.ndarray) -> np.ndarray:
    """An image in [0, 1] as the capture file keeps it: uint8."""
    return (np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64)), 0, 1) * 255).round().astype(np.uint8)


def save_capture(
    path: str | Path,
    views: list[AttentionView],
    step: int,
    epoch: int,
    grid: PatchGrid | None = None,
    images: list[np.ndarray] | tuple[np.ndarray, ...] = (),
    pictures: PictureSettings | None = None,
    labels: list[list[str] | None] | tuple = (),
    relevance: tuple[RelevanceMap, ...] = (),
) -> Path:
    """Write one capture's stored maps (and what its pictures are drawn with) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": CAPTURE_FORMAT,
        "step": step,
        "epoch": epoch,
        "views": [_view_meta(v) for v in views],
        "grid": None,
        "pictures": None if pictures is None else _pictures_meta(pictures),
        "labels": [None if x is None else [str(t) for t in x] for x in labels],
        "relevance": [
            {"sample": r.sample, "row": r.row, "layers": list(r.layers), "target": r.target}
            for r in relevance
        ],
    }
    if grid is not None:
        meta["grid"] = {
            "grid": list(grid.grid),
            "prefix_tokens": grid.prefix_tokens,
            "patch_size": list(grid.patch_size),
        }
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    for n, view in enumerate(views):
        arrays[f"w{n}"] = torch.from_numpy(np.ascontiguousarray(view.weights)).to(torch.float16).numpy()
        if view.visible is not None:
            arrays[f"v{n}"] = np.ascontiguousarray(view.visible)
        if view.pooling is not None:
            arrays[f"gq{n}"], arrays[f"gk{n}"] = (p.group.astype(np.int32) for p in view.pooling)
    for s, image in enumerate(images):
        arrays[f"img{s}"] = stored_image(image)
    for n, r in enumerate(relevance):
        arrays[f"rel{n}"] = np.asarray(r.matrix, dtype=np.float32)
    tmp = path.with_suffix(".tmp.npz")
    _write(tmp, arrays)
    tmp.replace(path)  # readers never see a half-written file
    return path


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` as ``np.savez_compressed`` writes it, at zlib level 1: attention maps compress
    about as well as at its level 6 (64 vs 62 MB for 12 layers × 12 heads × 512² × 2 samples) in
    two thirds of the time, which the drawing process spends at every capture."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def _view_meta(v: AttentionView) -> dict[str, Any]:
    meta = {"sample": v.sample, "layer": v.layer, "q_labels": v.q_labels, "k_labels": v.k_labels,
            "note": v.note, "layout": v.layout}  # fmt: skip
    if v.pooling is not None:
        meta["factor"] = [p.factor for p in v.pooling]
    return meta


def _pictures_meta(p: PictureSettings) -> dict[str, Any]:
    return {"plots": list(p.plots), "max_tokens": p.max_tokens, "keep": p.keep, "heads": list(p.heads),
            "top_k": p.top_k, "rollout_fusion": p.rollout_fusion,
            "rollout_discard": p.rollout_discard}  # fmt: skip


def load_capture(path: str | Path) -> SavedCapture:
    """Read a file :func:`save_capture` wrote.

    Raises:
        CaptureFileError: not a readable capture (not a zip, wrong format, bad metadata, members too
            large, arrays of the wrong shape); the message names the file.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                limit = MAX_META_BYTES if info.filename == "meta.npy" else MAX_MEMBER_BYTES
                if info.file_size > limit:
                    raise CaptureFileError(
                        f"{path}: member {info.filename!r} expands to {info.file_size} bytes (limit {limit})"
                    )
        with np.load(path, allow_pickle=False) as archive:
            meta = _meta(path, archive)
            grid = _grid(path, meta.get("grid"))
            views = [_view(path, archive, n, v, grid) for n, v in enumerate(meta["views"])]
            images = []
            while f"img{len(images)}" in archive.files:
                image = archive[f"img{len(images)}"]
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                    raise CaptureFileError(f"{path}: img{len(images)} is not a (H, W, 3) uint8 image")
                images.append(image)
            pictures, labels = _pictures(path, meta.get("pictures"), grid), _sample_labels(path, meta)
            relevance = _relevance(path, archive, meta.get("relevance", []))
    except CaptureFileError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise CaptureFileError(
            f"{path}: not a readable lightning_attnviz capture ({type(err).__name__}: {err})"
        ) from err
    step, epoch = int(meta["step"]), int(meta["epoch"])
    return SavedCapture(views, step, epoch, grid, tuple(images), pictures, labels, relevance)


def _meta(path: Path, archive: Any) -> dict[str, Any]:
    if "meta" not in archive.files:
        raise CaptureFileError(f"{path}: no `meta` entry; not a lightning_attnviz capture")
    meta = json.loads(str(archive["meta"]))
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CaptureFileError(f"{path}: format must be one of {list(READABLE_FORMATS)}, got {found!r}")
    for key in ("step", "epoch"):
        if not isinstance(meta.get(key), int):
            raise CaptureFileError(f"{path}: `{key}` must be an int, got {meta.get(key)!r}")
    if not isinstance(meta.get("views"), list):
        raise CaptureFileError(f"{path}: `views` must be a list")
    return meta


def _view(path: Path, archive: Any, n: int, v: Any, grid: PatchGrid | None) -> AttentionView:
    if not isinstance(v, dict):
        raise CaptureFileError(f"{path}: view {n} is not an object")
    weights = archive[f"w{n}"]
    if weights.ndim != 3 or not np.issubdtype(weights.dtype, np.floating):
        raise CaptureFileError(
            f"{path}: w{n} must be float (heads, q, k), got {weights.dtype} {weights.shape}"
        )
    visible = archive[f"v{n}"] if f"v{n}" in archive.files else None
    if visible is not None and (
        visible.dtype != bool or visible.ndim != 3 or visible.shape[1:] != weights.shape[1:]
    ):
        raise CaptureFileError(f"{path}: v{n} must be bool (1|heads, q, k) matching w{n}")
    q_labels, k_labels = v.get("q_labels"), v.get("k_labels")
    for name, labels, size in (
        ("q_labels", q_labels, weights.shape[1]),
        ("k_labels", k_labels, weights.shape[2]),
    ):
        if not isinstance(labels, list) or len(labels) != size or not all(isinstance(x, str) for x in labels):
            raise CaptureFileError(f"{path}: view {n} `{name}` must be {size} strings")
    layer, sample, note, layout = v.get("layer"), v.get("sample"), v.get("note", ""), v.get("layout", "token")
    if (
        not all(isinstance(x, str) for x in (layer, note, layout))
        or not isinstance(sample, int)
        or sample < 0
    ):
        raise CaptureFileError(
            f"{path}: view {n} needs a string `layer`, an int `sample` >= 0 and strings `note` and `layout`"
        )
    pooling = _pooling(path, archive, n, v.get("factor"), weights.shape[1:], grid)
    as_float = torch.from_numpy(np.ascontiguousarray(weights)).float().numpy()  # fast on subnormals
    return AttentionView(layer, sample, as_float, visible, q_labels, k_labels, note, pooling, layout)


def _pooling(
    path: Path, archive: Any, n: int, factor: Any, shape: tuple[int, ...], grid: PatchGrid | None
) -> tuple[AxisPlan, AxisPlan] | None:
    """The plans of a map pooled while capturing: each token's block, checked against the map."""
    if f"gq{n}" not in archive.files and f"gk{n}" not in archive.files:
        return None
    factors = factor if isinstance(factor, list) and len(factor) == 2 else [1, 1]
    plans = []
    for axis, name, blocks in ((0, f"gq{n}", shape[0]), (1, f"gk{n}", shape[1])):
        group = archive[name] if name in archive.files else np.zeros(0, dtype=np.int32)
        f = factors[axis]
        ok = group.ndim == 1 and np.issubdtype(group.dtype, np.integer) and isinstance(f, int) and f >= 1
        if not ok or not len(group) or group.min() < 0 or group.max() != blocks - 1:
            raise CaptureFileError(f"{path}: {name} must be the block (0..{blocks - 1}) of each token")
        if (np.bincount(group, minlength=blocks) == 0).any():
            raise CaptureFileError(f"{path}: {name} leaves a block of w{n} without tokens")
        on_grid = grid if grid is not None and grid.length == len(group) else None
        plans.append(AxisPlan(group.astype(np.int64), on_grid, f))
    return plans[0], plans[1]


def _pictures(path: Path, p: Any, grid: PatchGrid | None) -> PictureSettings | None:
    if p is None:
        return None
    try:
        settings = PictureSettings(
            plots=tuple(str(k) for k in p["plots"]),
            max_tokens=int(p["max_tokens"]),
            keep=int(p["keep"]),
            heads=tuple(int(h) for h in p["heads"]),
            top_k=int(p["top_k"]),
            grid=grid,
            rollout_fusion=str(p["rollout_fusion"]),
            rollout_discard=float(p["rollout_discard"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CaptureFileError(f"{path}: bad `pictures` settings {p!r} ({err})") from err
    if settings.max_tokens < 2 or settings.keep < 0 or not 0 <= settings.rollout_discard < 1:
        raise CaptureFileError(f"{path}: `pictures` settings out of range: {p!r}")
    return settings


def _sample_labels(path: Path, meta: dict[str, Any]) -> tuple[tuple[str, ...] | None, ...]:
    labels = meta.get("labels", [])
    ok = isinstance(labels, list) and all(
        x is None or (isinstance(x, list) and all(isinstance(t, str) for t in x)) for x in labels
    )
    if not ok:
        raise CaptureFileError(f"{path}: `labels` must be a list of token lists (or null) per sample")
    return tuple(None if x is None else tuple(x) for x in labels)


def _relevance(path: Path, archive: Any, described: Any) -> tuple[RelevanceMap, ...]:
    if not isinstance(described, list):
        raise CaptureFileError(f"{path}: `relevance` must be a list")
    maps = []
    for n, r in enumerate(described):
        matrix = archive[f"rel{n}"] if f"rel{n}" in archive.files else None
        square = matrix is not None and matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1]
        try:
            sample, row, layers, target = (
                int(r["sample"]),
                int(r["row"]),
                tuple(r["layers"]),
                str(r["target"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CaptureFileError(f"{path}: relevance {n} is not described ({err})") from err
        if not square or not 0 <= row < matrix.shape[0] or sample < 0:
            raise CaptureFileError(f"{path}: rel{n} must be a square float matrix with row {row} in it")
        maps.append(RelevanceMap(sample, matrix.astype(np.float32), row, tuple(map(str, layers)), target))
    return tuple(maps)


def _grid(path: Path, grid: Any) -> PatchGrid | None:
    if grid is None:
        return None
    try:
        return PatchGrid(tuple(grid["grid"]), grid["prefix_tokens"], tuple(grid["patch_size"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CaptureFileError(f"{path}: bad patch grid {grid!r} ({err})") from err
