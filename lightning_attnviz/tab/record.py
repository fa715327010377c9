"""The Attention tab's record: one step of one sample and layer, as bytes.

The callback encodes, the TensorBoard plugin serves the bytes untouched, and the tab (``static/record.js``),
the tests and the CLI decode. This module depends on numpy and TensorBoard's protos only, so that all of
them share one encoder and one decoder.

Format ``attnviz/2``, little-endian::

    uint32 n                       length of the header
    n bytes                        UTF-8 JSON header (below)
    heads·q·k uint8                weights: round(w / scales[h] · 254); 255 = not finite (NaN, ±inf);
                                   masked cells are 0
    ceil(m·q·k / 8) bytes          only if header["mask"]: the visible cells, np.packbits(bitorder="little"),
                                   m = header["mask"]["heads"] (1: one mask for every head)
    height·width·3 uint8           only if header["image"]: the sample's picture, RGB

Header: ``{"format", "step", "layer", "sample", "heads", "q", "k", "scales", "q_labels", "k_labels",
"note", "mask": null | {"heads"}, "image": null | {"height", "width", "grid": [rows, cols], "prefix"}}``.

Why these choices: one byte per cell keeps a 512-token, 8-head map at 2 MiB, and a per-head scale keeps
a head whose weights are all small readable. Masked cells (padding, a causal future) travel as bits so
the tab can draw them gray instead of as a weight of 0; 255 is kept for NaN for the same reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

PLUGIN_NAME = "attnviz"  # the TensorBoard plugin (tab/plugin.py) lists summaries written under this name
FORMAT = "attnviz/2"
LEVELS = 254  # quantisation levels per head; byte 255 marks a cell that is not finite
NOT_FINITE = 255
_LENGTH = 4  # bytes of the header length


@dataclass(frozen=True)
class DecodedMap:
    """A record read back. Arrays are read-only.

    Shape:
        weights: ``(heads, q, k)`` float32, dequantised; NaN where the encoded weight was not finite,
        0 where masked. visible: ``(1 | heads, q, k)`` bool or None. image: ``(height, width, 3)`` uint8.
    """

    format: str
    step: int
    layer: str
    sample: int
    heads: int
    q: int
    k: int
    scales: tuple[float, ...]
    q_labels: tuple[str, ...]
    k_labels: tuple[str, ...]
    note: str
    weights: np.ndarray
    visible: np.ndarray | None  # None: nothing masked (also when every cell was visible)
    image: np.ndarray | None
    grid: tuple[int, int] | None
    prefix_tokens: int


def encode_map(
    *,
    layer: str,
    sample: int,
    step: int,
    weights: np.ndarray,
    visible: np.ndarray | None,
    q_labels: list[str],
    k_labels: list[str],
    note: str = "",
    image: np.ndarray | None = None,
    grid: tuple[int, int] | None = None,
    prefix_tokens: int = 0,
) -> bytes:
    """One step of one sample and layer for the Attention tab (format in the module docstring).

    Args:
        weights: attention weights, rows summing to 1; may hold NaN or inf (drawn gray).
        visible: False where a key was masked for a query (padding, causal future); None: nothing masked.
        q_labels, k_labels: one label per query row and key column.
        note: how the map was reduced, shown under the scale.
        image: the vision sample, float in [0, 1] (or uint8), with ``grid``.
        grid: the patch grid ``(rows, cols)``; the patches are keys ``prefix_tokens`` onwards.

    Raises:
        ValueError: a shape or label count does not match ``weights``, or ``image`` comes without ``grid``.

    Shape:
        weights: ``(heads, q, k)``. visible: broadcastable to it, ``(1 | heads, q, k)``.
        image: ``(height, width, 3)``.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 3:
        raise ValueError(f"`weights` must have shape (heads, q, k), got {weights.shape}")
    heads, q, k = weights.shape
    if len(q_labels) != q or len(k_labels) != k:
        raise ValueError(
            f"`q_labels` and `k_labels` need {q} and {k} labels, got {len(q_labels)} and {len(k_labels)}"
        )
    mask = _mask(visible, weights.shape)
    finite = np.isfinite(weights)
    shown = finite if mask is None else finite & mask
    kept = np.where(shown, weights, 0.0)
    scales = np.maximum(kept.reshape(heads, -1).max(axis=1, initial=0.0), 0.0).astype(np.float32)
    levels = np.round(kept / np.maximum(scales, 1e-30)[:, None, None] * LEVELS)
    cells = np.clip(levels, 0, LEVELS).astype(np.uint8)
    cells[~finite] = NOT_FINITE
    if mask is not None:
        cells[~np.broadcast_to(mask, cells.shape)] = 0  # masked wins: a fully masked row is NaN
    header: dict[str, Any] = {
        "format": FORMAT,
        "step": int(step),
        "layer": str(layer),
        "sample": int(sample),
        "heads": int(heads),
        "q": int(q),
        "k": int(k),
        "scales": [float(s) for s in scales],
        "q_labels": [str(s) for s in q_labels],
        "k_labels": [str(s) for s in k_labels],
        "note": note,
        "mask": None if mask is None else {"heads": int(mask.shape[0])},
        "image": None,
    }
    payload = [cells.tobytes()]
    if mask is not None:
        payload.append(np.packbits(mask.ravel(), bitorder="little").tobytes())
    if image is not None:
        if grid is None:
            raise ValueError("`grid` (patch rows, cols) is required with `image`, got None")
        rgb = _rgb(image)
        header["image"] = {
            "height": int(rgb.shape[0]),
            "width": int(rgb.shape[1]),
            "grid": [int(grid[0]), int(grid[1])],
            "prefix": int(prefix_tokens),
        }
        payload.append(rgb.tobytes())
    encoded = json.dumps(header, ensure_ascii=False).encode()
    return len(encoded).to_bytes(_LENGTH, "little") + encoded + b"".join(payload)


def decode_map(blob: bytes) -> DecodedMap:
    """Reads a record that :func:`encode_map` wrote.

    Raises:
        ValueError: not an ``attnviz/2`` record, or its length does not match its header.
    """
    if len(blob) < _LENGTH:
        raise ValueError(f"an attnviz record starts with a {_LENGTH}-byte length, got {len(blob)} bytes")
    n = int.from_bytes(blob[:_LENGTH], "little")
    if _LENGTH + n > len(blob):
        raise ValueError(f"header of {n} bytes in a record of {len(blob)} bytes")
    header = json.loads(bytes(blob[_LENGTH : _LENGTH + n]).decode())
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"record format must be {FORMAT!r}, got {found!r}")
    try:  # every count is a plain int >= 0 before any size is computed from it
        heads, q, k = (_count(header[key]) for key in ("heads", "q", "k"))
        mask_heads = _count(header["mask"]["heads"]) if header["mask"] else 0
        info = header["image"]
        pixels = (_count(info["height"]), _count(info["width"])) if info else (0, 0)
        missing = [
            key for key in ("step", "layer", "sample", "q_labels", "k_labels", "note") if key not in header
        ]
        if missing:
            raise ValueError(f"an attnviz record header without {missing}")
        if len(header["scales"]) != heads or mask_heads not in (0, 1, heads):
            raise ValueError(f"{len(header['scales'])} scales and a mask of {mask_heads} for {heads} heads")
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"malformed attnviz record header ({type(err).__name__}: {err})") from err
    sizes = [heads * q * k, (mask_heads * q * k + 7) // 8, pixels[0] * pixels[1] * 3]
    if _LENGTH + n + sum(sizes) != len(blob):
        raise ValueError(f"record of {len(blob)} bytes, its header describes {_LENGTH + n + sum(sizes)}")
    body = np.frombuffer(blob, dtype=np.uint8, offset=_LENGTH + n)
    cells = body[: sizes[0]].reshape(heads, q, k)
    scales = np.asarray(header["scales"], dtype=np.float32)
    weights = cells.astype(np.float32) / LEVELS * scales[:, None, None]
    weights[cells == NOT_FINITE] = np.nan
    weights.flags.writeable = False
    visible = None
    if mask_heads:
        bits = np.unpackbits(body[sizes[0] : sizes[0] + sizes[1]], bitorder="little")
        visible = bits[: mask_heads * q * k].astype(bool).reshape(mask_heads, q, k)
        visible.flags.writeable = False
    image = body[sizes[0] + sizes[1] :].reshape(*pixels, 3) if info else None
    return DecodedMap(
        format=header["format"],
        step=header["step"],
        layer=header["layer"],
        sample=header["sample"],
        heads=heads,
        q=q,
        k=k,
        scales=tuple(header["scales"]),
        q_labels=tuple(header["q_labels"]),
        k_labels=tuple(header["k_labels"]),
        note=header["note"],
        weights=weights,
        visible=visible,
        image=image,
        grid=tuple(info["grid"]) if info else None,
        prefix_tokens=info["prefix"] if info else 0,
    )


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a count in an attnviz record header must be an int >= 0, got {value!r}")
    return value


def tab_value(tag: str, blob: bytes) -> Any:
    """The summary value that stores ``blob`` under ``tag`` for the Attention tab.

    A blob sequence of length 1, as TensorBoard's images plugin writes them: the data providers then
    list steps from blob references and read one blob on demand, never every stored map. Write it
    with ``Summary(value=[...])`` at a step. Per-step content lives in the blob, not in the metadata,
    of which TensorBoard keeps only the first per tag.

    Returns:
        a ``tensorboard.compat.proto.summary_pb2.Summary.Value``.
    """
    from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_BLOB_SEQUENCE, Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING

    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=b'{"version": 2}'),
        data_class=DATA_CLASS_BLOB_SEQUENCE,
    )
    tensor = TensorProto(
        dtype=DT_STRING,
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        string_val=[blob],
    )
    return Summary.Value(tag=tag, metadata=metadata, tensor=tensor)


def _mask(visible: np.ndarray | None, shape: tuple[int, int, int]) -> np.ndarray | None:
    """``visible`` as a bool ``(1 | heads, q, k)`` array, or None when it masks nothing."""
    if visible is None:
        return None
    mask = np.asarray(visible, dtype=bool)
    mask = mask.reshape((1,) * (3 - mask.ndim) + mask.shape) if mask.ndim < 3 else mask
    try:
        np.broadcast_shapes(mask.shape, shape)
    except ValueError:
        raise ValueError(f"`visible` must broadcast to weights {shape}, got {mask.shape}") from None
    heads = 1 if mask.shape[0] == 1 else shape[0]
    mask = np.broadcast_to(mask, (heads, *shape[1:]))
    return None if mask.all() else np.ascontiguousarray(mask)


def _rgb(image: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 picture from floats in [0, 1] or uint8."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"`image` must have shape (height, width, 3), got {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return (np.clip(np.nan_to_num(image.astype(np.float32)), 0, 1) * 255).round().astype(np.uint8)
