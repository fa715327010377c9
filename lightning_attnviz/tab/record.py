"""The Attention tab's records: one step of one sample and layer as bytes, and the run-level records
beside them (the layer × head overview of a capture, and markers on the step axis).

The pipeline encodes, the TensorBoard plugin serves the bytes untouched, and the tab (``static/record.js``),
the tests and the CLI decode. This module depends on numpy and TensorBoard's protos only, so that all of
them share one encoder and one decoder.

Map format ``attnviz/3`` (``attnviz/2`` is still decoded), little-endian::

    uint32 n                       length of the header
    n bytes                        UTF-8 JSON header (below)
    heads·q·k uint8                weights, log-quantised per head (below); 255 = not finite (NaN, ±inf);
                                   masked cells are 0
    ceil(m·q·k / 8) bytes          only if header["mask"]: the visible cells, np.packbits(bitorder="little"),
                                   m = header["mask"]["heads"] (1: one mask for every head)
    height·width·3 uint8           only if header["image"]: the sample's picture, RGB

Header: ``{"format", "step", "epoch", "layer", "sample", "heads", "q", "k", "scales", "floors", "q_labels",
"k_labels", "note", "mask": null | {"heads"}, "image": null | {"height", "width", "grid": [rows, cols],
"prefix"}, "blocks": null | {"q": axis, "k": axis}}``, an axis ``{"alone", "grid": null | [rows, cols,
prefix], "sizes": null | [tokens per cell], "factor"}`` (:class:`AxisBlocks`: how the tab pools the record
on screen by the pictures' rule). Byte ``b`` of head ``h`` is the weight
``floors[h] · (scales[h] / floors[h]) ^ ((b - 1) / 253)`` for ``b`` in 1..254, and 0 for 0 (a weight below
the floor, or masked). ``attnviz/2`` had no epoch and no floors, and stored
``round(w / scales[h] · 254)``; records of earlier versions have no ``blocks``.

Why these choices: one byte per cell keeps a 512-token, 8-head map at 2 MiB. The tab colours a cell by
its share of the row against uniform on a log scale, as the PNGs do; linear bytes left everything below
``scale / 508`` at 0 (a uniform row of a 256-token causal map, whose first row is one-hot), so the bytes
are spaced on a log scale from the head's largest weight down to ``scale / (2·k²)``, below the scale's
bottom (``1/n²``): every byte is within half a step, ``ln(2·k²) / 506`` (1 % at 10 keys, 3 % at 2,048),
of the weight. Masked cells (padding, a causal future) travel as bits so the tab can draw them gray
instead of as a weight of 0; 255 is kept for NaN for the same reason.

Beside the maps, under the same plugin, each capture may write one overview record (JSON: the
layer × head matrix of every metric the ``attention/stats/<metric>`` pictures show) and marker records
(JSON: texts the monitor attaches to a step, such as a phase change). The summary metadata says which
kind a tag holds (:func:`tab_value`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_attnviz.tab.blocks import AxisBlocks, read_blocks
from lightning_attnviz.tab.blocks import count as _count

PLUGIN_NAME = "attnviz"  # the TensorBoard plugin (tab/plugin.py) lists summaries written under this name
FORMAT = "attnviz/3"
READABLE = ("attnviz/2", FORMAT)
LEVELS = 254  # quantisation levels per head; byte 255 marks a cell that is not finite
NOT_FINITE = 255
KINDS = ("map", "overview", "markers")  # what a tag holds, said in its summary metadata
MARKERS_FORMAT = "attnviz-markers/1"
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
    epoch: int | None  # None in attnviz/2 records
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
    blocks: tuple[AxisBlocks, AxisBlocks] | None = None  # None: a record written before they were


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
    epoch: int | None = None,
    blocks: tuple[AxisBlocks, AxisBlocks] | None = None,
) -> bytes:
    """One step of one sample and layer for the Attention tab (format in the module docstring).

    Args:
        weights: attention weights, rows summing to 1; may hold NaN or inf (drawn gray).
        visible: False where a key was masked for a query (padding, causal future); None: nothing masked.
        q_labels, k_labels: one label per query row and key column.
        note: how the map was reduced, shown under the scale.
        image: the vision sample, float in [0, 1] (or uint8), with ``grid``.
        grid: the patch grid ``(rows, cols)``; the patches are keys ``prefix_tokens`` onwards.
        epoch: the training epoch of ``step``, shown beside it.
        blocks: how the tab may pool the query and key axes on screen (``None``: it keeps the first
            token alone and pools an image's patch grid in squares).

    Raises:
        ValueError: a shape or label count does not match ``weights``, or ``image`` comes without ``grid``.

    Shape:
        weights: ``(heads, q, k)``. visible: broadcastable to it, ``(1 | heads, q, k)``.
        image: ``(height, width, 3)``.
    """
    weights = _checked(weights, q_labels, k_labels)
    heads, q, k = weights.shape
    for axis, n in zip(blocks or (), (q, k), strict=False):
        axis.check(n)
    mask = _mask(visible, weights.shape)
    cells, scales, floors = _cells(weights, mask)
    header: dict[str, Any] = {
        "format": FORMAT, "step": int(step), "epoch": None if epoch is None else int(epoch),
        "layer": str(layer), "sample": int(sample), "heads": int(heads), "q": int(q), "k": int(k),
        "scales": [float(s) for s in scales], "floors": [float(f) for f in floors],
        "q_labels": [str(s) for s in q_labels], "k_labels": [str(s) for s in k_labels], "note": note,
        "mask": None if mask is None else {"heads": int(mask.shape[0])}, "image": None,
        "blocks": None if blocks is None else {"q": blocks[0].to_json(), "k": blocks[1].to_json()},
    }  # fmt: skip
    payload = [cells.tobytes()]
    if mask is not None:
        payload.append(np.packbits(mask.ravel(), bitorder="little").tobytes())
    if image is not None:
        header["image"], rgb = _image(image, grid, prefix_tokens)
        payload.append(rgb)
    encoded = json.dumps(header, ensure_ascii=False).encode()
    return len(encoded).to_bytes(_LENGTH, "little") + encoded + b"".join(payload)


def _checked(weights: np.ndarray, q_labels: list[str], k_labels: list[str]) -> np.ndarray:
    """``weights`` as float32, after checking it is ``(heads, q, k)`` with a label per row and column."""
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 3:
        raise ValueError(f"`weights` must have shape (heads, q, k), got {weights.shape}")
    _, q, k = weights.shape
    if len(q_labels) != q or len(k_labels) != k:
        raise ValueError(
            f"`q_labels` and `k_labels` need {q} and {k} labels, got {len(q_labels)} and {len(k_labels)}"
        )
    return weights


def _cells(weights: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cell bytes on each head's log scale, with that scale's top and floor per head: non-finite
    cells are :data:`NOT_FINITE`, masked cells 0.

    Shape:
        weights: ``(heads, q, k)``; mask: ``(1 | heads, q, k)``; returns ``(heads, q, k)`` uint8 and
        ``(heads,)`` twice.
    """
    heads, _, k = weights.shape
    finite = np.isfinite(weights)
    shown = finite if mask is None else finite & mask
    kept = np.where(shown, np.maximum(weights, 0.0), 0.0)
    scales = kept.reshape(heads, -1).max(axis=1, initial=0.0).astype(np.float32)
    floors = (scales / (2.0 * max(k, 1) ** 2)).astype(np.float32)
    cells = _log_bytes(kept, scales, floors)
    cells[~finite] = NOT_FINITE
    if mask is not None:
        cells[~np.broadcast_to(mask, cells.shape)] = 0  # masked wins: a fully masked row is NaN
    return cells, scales, floors


def _image(
    image: np.ndarray, grid: tuple[int, int] | None, prefix_tokens: int
) -> tuple[dict[str, Any], bytes]:
    """The header's ``image`` entry and the RGB bytes of a vision sample, which needs its patch grid."""
    if grid is None:
        raise ValueError("`grid` (patch rows, cols) is required with `image`, got None")
    rgb = _rgb(image)
    entry = {"height": int(rgb.shape[0]), "width": int(rgb.shape[1]), "grid": [int(grid[0]), int(grid[1])],
             "prefix": int(prefix_tokens)}  # fmt: skip
    return entry, rgb.tobytes()


def _log_bytes(kept: np.ndarray, scales: np.ndarray, floors: np.ndarray) -> np.ndarray:
    """Bytes 1..254 log-spaced from each head's floor to its scale; 0 below half a step under the floor.

    Shape:
        kept: ``(heads, q, k)``, finite and >= 0; scales, floors: ``(heads,)``.
    """
    ratio = np.where(floors > 0, scales / np.maximum(floors, 1e-38), 1.0)[:, None, None]
    step = np.log(np.maximum(ratio, 1.0 + 1e-6)) / (LEVELS - 1)
    with np.errstate(divide="ignore"):  # thread-local: log(0) is -inf, mapped to byte 0 below
        place = 1 + (np.log(kept) - np.log(np.maximum(floors, 1e-38))[:, None, None]) / step
    cells = np.clip(np.round(place), 1, LEVELS)
    return np.where(place >= 0.5, cells, 0).astype(np.uint8)


def byte_weights(header: Mapping[str, Any]) -> np.ndarray:
    """Per head, the weight each byte stands for: ``(heads, 256)`` float32, NaN at byte 255."""
    scales = np.asarray(header["scales"], dtype=np.float64)[:, None]
    b = np.arange(256, dtype=np.float64)[None, :]
    if header["format"] == "attnviz/2":
        table = b / LEVELS * scales
    else:
        floors = np.asarray(header["floors"], dtype=np.float64)[:, None]
        ratio = np.where(floors > 0, scales / np.maximum(floors, 1e-38), 1.0)
        table = np.where(b >= 1, floors * ratio ** ((b - 1) / (LEVELS - 1)), 0.0)
    table[:, NOT_FINITE] = np.nan
    return table.astype(np.float32)


def decode_map(blob: bytes) -> DecodedMap:
    """Reads a record that :func:`encode_map` wrote (``attnviz/3``, or ``attnviz/2`` from older runs).

    Raises:
        ValueError: not an attnviz map record, or its length does not match its header.
    """
    header, n = _header(blob, READABLE)
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
    weights = byte_weights(header)[np.arange(heads)[:, None, None], cells]
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
        epoch=header.get("epoch"),
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
        blocks=read_blocks(header.get("blocks"), q, k),
    )


def _header(blob: bytes, formats: Sequence[str]) -> tuple[dict[str, Any], int]:
    if len(blob) < _LENGTH:
        raise ValueError(f"an attnviz record starts with a {_LENGTH}-byte length, got {len(blob)} bytes")
    n = int.from_bytes(blob[:_LENGTH], "little")
    if _LENGTH + n > len(blob):
        raise ValueError(f"header of {n} bytes in a record of {len(blob)} bytes")
    header = json.loads(bytes(blob[_LENGTH : _LENGTH + n]).decode())
    if not isinstance(header, dict) or header.get("format") not in formats:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"record format must be one of {list(formats)}, got {found!r}")
    return header, n


# -- markers on the step axis ----------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """A text attached to a training step (a phase change, say), drawn on the tab's step slider."""

    step: int
    text: str


def encode_markers(markers: Sequence[Marker]) -> bytes:
    """The markers of one step as one record (one tag holds one record per step).

    Raises:
        ValueError: no markers, markers of different steps, or an empty text.
    """
    steps = {m.step for m in markers}
    if len(steps) != 1:
        raise ValueError(f"`markers` must all be of one step, got steps {sorted(steps)}")
    if any(not str(m.text).strip() for m in markers):
        raise ValueError("`markers` need a text each, got an empty one")
    record = {"format": MARKERS_FORMAT, "step": int(steps.pop()), "texts": [str(m.text) for m in markers]}
    return json.dumps(record, ensure_ascii=False).encode()


def decode_markers(blob: bytes) -> list[Marker]:
    """Reads :func:`encode_markers`'s record. Raises ValueError for another format."""
    record = read_json(blob, MARKERS_FORMAT)
    return [Marker(int(record["step"]), str(text)) for text in record["texts"]]


def read_json(blob: bytes, fmt: str) -> dict[str, Any]:
    try:
        record = json.loads(bytes(blob).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"a {fmt} record is UTF-8 JSON: {err}") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"record format must be {fmt!r}, got {found!r}")
    return record


def tab_value(tag: str, blob: bytes, kind: str = "map") -> Any:
    """The summary value that stores ``blob`` under ``tag`` for the Attention tab.

    A blob sequence of length 1, as TensorBoard's images plugin writes them: the data providers then
    list steps from blob references and read one blob on demand, never every stored map. Write it
    with ``Summary(value=[...])`` at a step. Per-step content lives in the blob; the metadata, of which
    TensorBoard keeps only the first per tag, says the tag's ``kind`` (one of :data:`KINDS`).

    Returns:
        a ``tensorboard.compat.proto.summary_pb2.Summary.Value``.
    """
    from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_BLOB_SEQUENCE, Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING

    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {list(KINDS)}, got {kind!r}")
    content = json.dumps({"version": 3, "kind": kind}).encode()
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content),
        data_class=DATA_CLASS_BLOB_SEQUENCE,
    )
    tensor = TensorProto(
        dtype=DT_STRING,
        tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        string_val=[blob],
    )
    return Summary.Value(tag=tag, metadata=metadata, tensor=tensor)


def kind_of(plugin_content: bytes) -> str:
    """The kind of a tag from its summary metadata's content; ``"map"`` for records before kinds."""
    try:
        kind = json.loads(plugin_content.decode() or "{}").get("kind", "map")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return "map"
    return kind if kind in KINDS else "map"


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
