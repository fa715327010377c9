"""Saved captures: ``attention_captures/step_<step>.npz``, written by the monitor, read by the CLI.

Format ``lightning_attnviz.capture/3``, a numpy ``.npz`` archive holding

- ``meta``: a JSON string: format, step, epoch, per view its sample, layer, labels, note and layout
  (and, for a map pooled while capturing, the squares' side ``factor`` per axis; for a windowed map,
  its ``stage`` grid), for vision runs the
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

Reading never trusts the file. Before any array is read, every member's own header (shape and dtype)
is checked against what the archive says the member holds, against the limits of
:mod:`lightning_attnviz.sinks.archive` (one member, and all together); images are at most
:data:`MAX_IMAGE_SIDE` pixels a side. The metadata is validated, and every problem is a
:class:`CaptureFileError` naming the file, so no file makes a reader allocate more than these limits.
Writing goes through a hidden temporary file (``.step_<step>.npz.partial``), removed if the write
fails, so a full disk leaves nothing that looks like a capture.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np
import torch

from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.analysis.vision import HeadFusion
from lightning_attnviz.capture.blocks import AxisPlan
from lightning_attnviz.capture.grid import PatchGrid, stage_grid
from lightning_attnviz.capture.relevance import RelevanceMap
from lightning_attnviz.render.plots import PictureSettings
from lightning_attnviz.sinks.archive import (
    READ_ERRORS,
    CaptureFileError,
    Member,
    check_sizes,
    read_member,
    read_members,
)

CAPTURE_FORMAT = "lightning_attnviz.capture/3"
READABLE_FORMATS = ("lightning_attnviz.capture/1", "lightning_attnviz.capture/2", CAPTURE_FORMAT)
MAX_IMAGE_SIDE = 2048  # pixels (ViT inputs are 224 to 1024); drawing a 2048² overlay takes ~0.9 GB
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
    check_sizes(path, [(f"{name}.npy", a.nbytes) for name, a in arrays.items()])
    for s in range(len(images)):
        _check_image(path, arrays[f"img{s}"].shape, s)
    if grid is not None:
        _check_grid(path, grid)
    tmp = path.with_name(f".{path.name}.partial")  # never matches step_*.npz
    try:
        _write(tmp, arrays)
        tmp.replace(path)  # readers never see a half-written file
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves nothing behind
        raise
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
    if v.stage is not None:
        meta["stage"] = list(v.stage)
    return meta


def _pictures_meta(p: PictureSettings) -> dict[str, Any]:
    return {"plots": list(p.plots), "max_tokens": p.max_tokens, "keep": p.keep, "heads": list(p.heads),
            "top_k": p.top_k, "rollout_fusion": p.rollout_fusion,
            "rollout_discard": p.rollout_discard}  # fmt: skip


def load_capture(path: str | Path) -> SavedCapture:
    """Read a file :func:`save_capture` wrote; what it holds is checked before it is read.

    Raises:
        CaptureFileError: not a readable capture (not a zip, wrong format, bad metadata, members or
            images too large, arrays of the wrong shape); the message names the file.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = read_members(path, archive)
            meta = _meta(path, archive, members)
            grid = _grid(path, meta.get("grid"))
            views = [_view(path, archive, members, n, v, grid) for n, v in enumerate(meta["views"])]
            images: list[np.ndarray] = []
            while f"img{len(images)}" in members:
                images.append(_image(path, archive, members[f"img{len(images)}"], len(images)))
            pictures, labels = _pictures(path, meta.get("pictures"), grid), _sample_labels(path, meta)
            relevance = _relevance(path, archive, members, meta.get("relevance", []))
    except CaptureFileError:
        raise
    except READ_ERRORS as err:
        raise CaptureFileError(
            f"{path}: not a readable lightning_attnviz capture ({type(err).__name__}: {err})"
        ) from err
    step, epoch = int(meta["step"]), int(meta["epoch"])
    return SavedCapture(views, step, epoch, grid, tuple(images), pictures, labels, relevance)


def _check_image(path: Path, shape: tuple[int, ...], s: int) -> None:
    if not 1 <= min(shape[:2]) <= max(shape[:2]) <= MAX_IMAGE_SIDE:
        raise CaptureFileError(
            f"{path}: img{s} is {shape[1]}×{shape[0]} pixels; images of 1 to {MAX_IMAGE_SIDE} "
            "pixels a side are read"
        )


def _check_grid(path: Path, grid: PatchGrid) -> None:
    """The pixels a patch grid covers are bounded like an image (drawing upsamples heat to them)."""
    covered = [n * size for n, size in zip(grid.grid, grid.patch_size, strict=True)]
    if max(covered) > MAX_IMAGE_SIDE:
        raise CaptureFileError(
            f"{path}: the patch grid {grid.grid} of {grid.patch_size}-pixel patches covers "
            f"{covered[1]}×{covered[0]} pixels; at most {MAX_IMAGE_SIDE} a side are drawn"
        )


def _meta(path: Path, archive: zipfile.ZipFile, members: dict[str, Member]) -> dict[str, Any]:
    member = members.get("meta")
    if member is None or member.shape != () or member.dtype.kind != "U":
        raise CaptureFileError(f"{path}: no `meta` string; not a lightning_attnviz capture")
    meta = json.loads(str(read_member(archive, member)))
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CaptureFileError(f"{path}: format must be one of {list(READABLE_FORMATS)}, got {found!r}")
    for key in ("step", "epoch"):
        if not isinstance(meta.get(key), int):
            raise CaptureFileError(f"{path}: `{key}` must be an int, got {meta.get(key)!r}")
    if not isinstance(meta.get("views"), list):
        raise CaptureFileError(f"{path}: `views` must be a list")
    return meta


def _view(
    path: Path, archive: zipfile.ZipFile, members: dict[str, Member], n: int, v: Any, grid: PatchGrid | None
) -> AttentionView:
    """View ``n``: its shapes are checked from the headers, then its arrays are read."""
    if not isinstance(v, dict):
        raise CaptureFileError(f"{path}: view {n} is not an object")
    w, vis = members.get(f"w{n}"), members.get(f"v{n}")
    if w is None or len(w.shape) != 3 or min(w.shape) < 1 or w.dtype.kind != "f":
        found = "nothing" if w is None else f"{w.dtype} {w.shape}"
        raise CaptureFileError(f"{path}: w{n} must be float (heads, q, k), each at least 1, got {found}")
    if vis is not None and (
        vis.dtype != bool
        or len(vis.shape) != 3
        or vis.shape[0] not in (1, w.shape[0])
        or vis.shape[1:] != w.shape[1:]
    ):
        raise CaptureFileError(f"{path}: v{n} must be bool (1|heads, q, k) matching w{n}")
    q_labels, k_labels = v.get("q_labels"), v.get("k_labels")
    for name, labels, size in (("q_labels", q_labels, w.shape[1]), ("k_labels", k_labels, w.shape[2])):
        if not isinstance(labels, list) or len(labels) != size or not all(isinstance(x, str) for x in labels):
            raise CaptureFileError(f"{path}: view {n} `{name}` must be {size} strings")
    layer, sample, note, layout = v.get("layer"), v.get("sample"), v.get("note", ""), v.get("layout", "token")
    if (
        not isinstance(layer, str)
        or not isinstance(note, str)
        or not isinstance(layout, str)
        or not isinstance(sample, int)
        or sample < 0
    ):
        raise CaptureFileError(
            f"{path}: view {n} needs a string `layer`, an int `sample` >= 0 and strings `note` and `layout`"
        )
    half = np.require(read_member(archive, w), requirements="W")  # torch wants a writable array
    weights = torch.from_numpy(half).float().numpy()  # torch: fast on float16 subnormals
    visible = None if vis is None else read_member(archive, vis)
    stage = _stage(path, n, v.get("stage"))
    on = stage_grid(grid, stage) if stage is not None else grid
    pooling = _pooling(path, archive, members, n, v.get("factor"), weights.shape[1:], on)
    # both checked above to be lists of strings (the loop over the two raises otherwise)
    q_names, k_names = cast(list[str], q_labels), cast(list[str], k_labels)
    return AttentionView(layer, sample, weights, visible, q_names, k_names, note, pooling, layout, stage)


def _stage(path: Path, n: int, stage: Any) -> tuple[int, int] | None:
    """A windowed map's stage grid ``(rows, cols)``, or ``None``."""
    if stage is None:
        return None
    ok = isinstance(stage, list) and len(stage) == 2 and all(isinstance(x, int) and x >= 1 for x in stage)
    if not ok:
        raise CaptureFileError(f"{path}: view {n} `stage` must be two ints >= 1, got {stage!r}")
    return stage[0], stage[1]


def _image(path: Path, archive: zipfile.ZipFile, member: Member, s: int) -> np.ndarray:
    """Image ``s``, ``(H, W, 3)`` uint8, at most :data:`MAX_IMAGE_SIDE` a side (checked unread)."""
    shape = member.shape
    if member.dtype != np.uint8 or len(shape) != 3 or shape[-1] != 3:
        raise CaptureFileError(f"{path}: img{s} is not a (H, W, 3) uint8 image, got {member.dtype} {shape}")
    _check_image(path, shape, s)
    return read_member(archive, member)



def _pooling(
    path: Path,
    archive: zipfile.ZipFile,
    members: dict[str, Member],
    n: int,
    factor: Any,
    shape: tuple[int, ...],
    grid: PatchGrid | None,
) -> tuple[AxisPlan, AxisPlan] | None:
    """The plans of a map pooled while capturing: each token's block, checked against the map."""
    if f"gq{n}" not in members and f"gk{n}" not in members:
        return None
    factors = factor if isinstance(factor, list) and len(factor) == 2 else [1, 1]
    plans = []
    for axis, name, blocks in ((0, f"gq{n}", shape[0]), (1, f"gk{n}", shape[1])):
        group = read_member(archive, members[name]) if name in members else np.zeros(0, dtype=np.int32)
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
    fusion = p.get("rollout_fusion") if isinstance(p, dict) else None
    if fusion not in get_args(HeadFusion):
        allowed = ", ".join(get_args(HeadFusion))
        raise CaptureFileError(f"{path}: `pictures` rollout_fusion must be one of {allowed}, got {fusion!r}")
    try:
        settings = PictureSettings(
            plots=tuple(str(k) for k in p["plots"]),
            max_tokens=int(p["max_tokens"]),
            keep=int(p["keep"]),
            heads=tuple(int(h) for h in p["heads"]),
            top_k=int(p["top_k"]),
            grid=grid,
            rollout_fusion=cast(HeadFusion, fusion),  # one of them: checked above
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


def _relevance(
    path: Path, archive: zipfile.ZipFile, members: dict[str, Member], described: Any
) -> tuple[RelevanceMap, ...]:
    if not isinstance(described, list):
        raise CaptureFileError(f"{path}: `relevance` must be a list")
    maps = []
    for n, r in enumerate(described):
        matrix = read_member(archive, members[f"rel{n}"]) if f"rel{n}" in members else None
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
        if matrix is None or not square or not 0 <= row < matrix.shape[0] or sample < 0:
            raise CaptureFileError(f"{path}: rel{n} must be a square float matrix with row {row} in it")
        maps.append(RelevanceMap(sample, matrix.astype(np.float32), row, tuple(map(str, layers)), target))
    return tuple(maps)


def _grid(path: Path, grid: Any) -> PatchGrid | None:
    if grid is None:
        return None
    try:
        found = PatchGrid(tuple(grid["grid"]), grid["prefix_tokens"], tuple(grid["patch_size"]))
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise CaptureFileError(f"{path}: bad patch grid {grid!r} ({err})") from err
    _check_grid(path, found)
    return found
