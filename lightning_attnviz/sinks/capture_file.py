"""Saved captures: ``attention_captures/step_<step>.npz``, written by the monitor, read by the CLI.

Format ``lightning_attnviz.capture/2``, a numpy ``.npz`` archive holding

- ``meta``: a JSON string: format, step, epoch, per view its sample, layer, labels and note, and for
  vision runs the patch grid (``grid``, ``prefix_tokens``, ``patch_size``);
- ``w<n>``: float16 weights ``(heads, q, k)`` of view ``n``; ``v<n>``: bool visibility, when masked;
- ``img<s>``: uint8 ``(H, W, 3)`` image of sample ``s`` (vision runs), so overlays and rollout can be
  drawn again from the file alone.

Reading never trusts the file: the archive's members are size-checked before they are read, the
metadata is validated, and every problem is a :class:`CaptureFileError` naming the file.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.capture.grid import PatchGrid

CAPTURE_FORMAT = "lightning_attnviz.capture/2"
READABLE_FORMATS = ("lightning_attnviz.capture/1", CAPTURE_FORMAT)
MAX_MEMBER_BYTES = 512 << 20  # an uncompressed array larger than this is refused (zip bombs)
MAX_META_BYTES = 16 << 20


class CaptureFileError(ValueError):
    """A saved capture that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class SavedCapture:
    views: list[AttentionView]
    step: int
    epoch: int
    grid: PatchGrid | None = None
    images: tuple[np.ndarray, ...] = ()  # uint8 (H, W, 3) per sample


def save_capture(
    path: str | Path,
    views: list[AttentionView],
    step: int,
    epoch: int,
    grid: PatchGrid | None = None,
    images: list[np.ndarray] | tuple[np.ndarray, ...] = (),
) -> Path:
    """Write one capture's drawn maps (and, for vision runs, its images and grid) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": CAPTURE_FORMAT,
        "step": step,
        "epoch": epoch,
        "views": [
            {
                "sample": v.sample,
                "layer": v.layer,
                "q_labels": v.q_labels,
                "k_labels": v.k_labels,
                "note": v.note,
            }
            for v in views
        ],
        "grid": None,
    }
    if grid is not None:
        meta["grid"] = {
            "grid": list(grid.grid),
            "prefix_tokens": grid.prefix_tokens,
            "patch_size": list(grid.patch_size),
        }
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    for n, view in enumerate(views):
        arrays[f"w{n}"] = view.weights.astype(np.float16)
        if view.visible is not None:
            arrays[f"v{n}"] = np.ascontiguousarray(view.visible)
    for s, image in enumerate(images):
        arrays[f"img{s}"] = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]  # numpy types allow_pickle= among them
    tmp.replace(path)  # readers never see a half-written file
    return path


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
            views = [_view(path, archive, n, v) for n, v in enumerate(meta["views"])]
            images: list[np.ndarray] = []
            while f"img{len(images)}" in archive.files:
                image = archive[f"img{len(images)}"]
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                    raise CaptureFileError(f"{path}: img{len(images)} is not a (H, W, 3) uint8 image")
                images.append(image)
            grid = _grid(path, meta.get("grid"))
    except CaptureFileError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise CaptureFileError(
            f"{path}: not a readable lightning_attnviz capture ({type(err).__name__}: {err})"
        ) from err
    return SavedCapture(views, int(meta["step"]), int(meta["epoch"]), grid, tuple(images))


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


def _view(path: Path, archive: Any, n: int, v: Any) -> AttentionView:
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
    layer, sample, note = v.get("layer"), v.get("sample"), v.get("note", "")
    if not isinstance(layer, str) or not isinstance(sample, int) or sample < 0 or not isinstance(note, str):
        raise CaptureFileError(
            f"{path}: view {n} needs a string `layer`, an int `sample` >= 0 and a string `note`"
        )
    labels = cast(list[str], q_labels), cast(list[str], k_labels)  # checked above
    return AttentionView(layer, sample, weights.astype(np.float32), visible, *labels, note)


def _grid(path: Path, grid: Any) -> PatchGrid | None:
    if grid is None:
        return None
    try:
        return PatchGrid(tuple(grid["grid"]), grid["prefix_tokens"], tuple(grid["patch_size"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CaptureFileError(f"{path}: bad patch grid {grid!r} ({err})") from err
