"""Write pictures and the module table to TensorBoard. Every tag is built here.

Tag scheme (stable; ``<layer>`` is the capture key, e.g. ``model.layers.0.self_attn``):

- ``attention/sample_<i>/<layer>/heatmap``: head-mean map, query × key, labelled with the tokens
- ``attention/sample_<i>/<layer>/head_<h>``: one head's map (heads chosen with ``heads=``)
- ``attention/sample_<i>/<layer>/heads``: all heads of the layer and their mean, as a grid
- ``attention/sample_<i>/<layer>/arrows``: which token attends to which (top-k lines)
- ``attention/sample_<i>/atlas``: every layer × head of the sample
- ``attention/sample_<i>/<layer>/evolution``: the head-mean map at the last captures, side by side
- ``attention/modules``: text table of the attention modules found, once per fit (the writer
  stores text as ``attention/modules/text_summary``)
- ``attention_stats/<metric>/<layer>/head_<h>`` and ``.../mean``: scalars, averaged over the fixed
  samples; metrics: ``entropy``, ``entropy_norm``, ``distance``, ``sink``, ``max_weight``, ``drift``
- ``attention_hist/<layer>``: histogram of the layer's weights at visible positions

Raw captures are saved as ``<log_dir>/attention_captures/step_<step>.npz`` (see :func:`save_capture`).
"""

from __future__ import annotations

import json
import queue
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_attnviz.capture import AttentionMap
from lightning_attnviz.reduce import AttentionView, LayerStats
from lightning_attnviz.render import Picture

PREFIX = "attention"
MODULES_TAG = f"{PREFIX}/modules"
STATS_PREFIX = "attention_stats"
HIST_PREFIX = "attention_hist"
CAPTURE_DIR = "attention_captures"
CAPTURE_FORMAT = "lightning_attnviz.capture/1"
PLUGIN_NAME = "attnviz"  # the Attention tab (tb_plugin.py) reads summaries written under this name
MAP_FORMAT = "attnviz/1"


def picture_tag(picture: Picture) -> str:
    """The TensorBoard tag of ``picture``."""
    base = f"{PREFIX}/sample_{picture.sample}"
    if picture.layer is None:
        return f"{base}/{picture.kind}"
    kind = picture.kind if picture.head is None else f"head_{picture.head}"
    return f"{base}/{_clean(picture.layer)}/{kind}"


def write_pictures(writer: Any, pictures: Sequence[Picture], step: int) -> None:
    """``writer`` is a ``SummaryWriter`` (``TensorBoardLogger.experiment``)."""
    for picture in pictures:
        writer.add_image(picture_tag(picture), picture.image, step, dataformats="HWC")


def write_modules(writer: Any, rows: Sequence[Sequence[object]], step: int) -> None:
    """A markdown table of the attention modules: name, type, heads, how their weights were captured."""
    header = "| module | type | heads | captured via |\n|---|---|---|---|\n"
    body = "".join("| " + " | ".join(str(c) for c in row) + " |\n" for row in rows)
    writer.add_text(MODULES_TAG, header + body, step)


def stat_tag(metric: str, layer: str, head: int | None) -> str:
    """``attention_stats/<metric>/<layer>/head_<h>``, or ``.../mean`` for the mean over heads."""
    return f"{STATS_PREFIX}/{metric}/{_clean(layer)}/{'mean' if head is None else f'head_{head}'}"


def write_stats(writer: Any, stats: Sequence[LayerStats], drift: dict[str, np.ndarray], step: int) -> None:
    """Every metric of every layer, per head and as the mean over heads (NaN values are skipped)."""
    for layer_stats in stats:
        per_metric = {m: getattr(layer_stats, m) for m in LayerStats.METRICS}
        if layer_stats.layer in drift:
            per_metric["drift"] = drift[layer_stats.layer]
        for metric, values in per_metric.items():
            finite = values[np.isfinite(values)]
            heads: list[tuple[int | None, float]] = [*enumerate(values)]
            if finite.size:
                heads.append((None, float(finite.mean())))
            for head, value in heads:
                if np.isfinite(value):
                    writer.add_scalar(stat_tag(metric, layer_stats.layer, head), float(value), step)


def write_layout(writer: Any, layers: Sequence[str]) -> None:
    """TensorBoard's custom-scalars layout: one chart per metric and layer, all its heads as lines."""
    layout = {
        f"attention {metric}": {
            layer: ["Multiline", [f"^{re.escape(f'{STATS_PREFIX}/{metric}/{_clean(layer)}/')}"]]
            for layer in layers
        }
        for metric in (*LayerStats.METRICS, "drift")
    }
    writer.add_custom_scalars(layout)


def write_histograms(
    writer: Any, records: Sequence[AttentionMap], step: int, max_values: int = 1 << 20
) -> None:
    """Histogram of each layer's weights at visible positions (a fixed stride keeps ≤ ``max_values``)."""
    for record in records:
        values = record.weights
        if record.visible is not None:
            values = values[record.visible.expand_as(values)]
        values = values.flatten()
        values = values[torch.isfinite(values)]
        if not values.numel():
            continue
        stride = max(1, values.numel() // max_values)
        writer.add_histogram(f"{HIST_PREFIX}/{_clean(record.key)}", values[::stride].numpy(), step)


def save_capture(directory: str | Path, views: Sequence[AttentionView], step: int, epoch: int) -> Path:
    """Save the drawn maps of one capture, compactly: ``step_<step>.npz`` in ``directory``.

    Format ``lightning_attnviz.capture/1``, a numpy ``.npz`` archive holding
    ``meta`` (a JSON string: format, step, epoch, and per view its sample, layer, labels and note),
    ``w<n>`` (float16 weights ``(heads, q, k)`` of view ``n``) and ``v<n>`` (bool visibility, when
    something was masked). Reading it back with :func:`load_capture` gives the views the logged
    pictures were drawn from.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
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
    }
    arrays = {"meta": np.array(json.dumps(meta))}
    for n, view in enumerate(views):
        arrays[f"w{n}"] = view.weights.astype(np.float16)
        if view.visible is not None:
            arrays[f"v{n}"] = np.ascontiguousarray(view.visible)
    path = directory / f"step_{step:08d}.npz"
    np.savez_compressed(path, **arrays)
    return path


def load_capture(path: str | Path) -> tuple[list[AttentionView], int, int]:
    """``(views, step, epoch)`` of a file written by :func:`save_capture`.

    Raises:
        ValueError: the file is not a lightning_attnviz capture.
    """
    with np.load(path) as archive:
        meta = json.loads(str(archive["meta"])) if "meta" in archive else {}
        if meta.get("format") != CAPTURE_FORMAT:
            raise ValueError(f"{path} is not a {CAPTURE_FORMAT} file (format {meta.get('format')!r})")
        views = [
            AttentionView(
                layer=v["layer"],
                sample=v["sample"],
                weights=archive[f"w{n}"].astype(np.float32),
                visible=archive.get(f"v{n}"),
                q_labels=v["q_labels"],
                k_labels=v["k_labels"],
                note=v["note"],
            )
            for n, v in enumerate(meta["views"])
        ]
    return views, meta["step"], meta["epoch"]


def encode_map(view: AttentionView, step: int, image: np.ndarray | None = None, grid: Any = None) -> bytes:
    """One step of one sample and layer for the Attention tab, compactly.

    Little-endian: a uint32 header length ``n``, ``n`` bytes of UTF-8 JSON (format, step, layer,
    sample, heads, q, k, per-head ``scale``, ``q_labels``, ``k_labels``, note, and for images
    ``{"height", "width", "grid": [rows, cols], "prefix"}``), then ``heads·q·k`` uint8 weights
    (weight = byte / 255 · scale[head]; masked positions are 0), then for images ``h·w·3`` uint8 RGB.
    """
    weights = np.nan_to_num(view.weights, nan=0.0, posinf=0.0, neginf=0.0)
    if view.visible is not None:
        weights = np.where(view.visible, weights, 0.0)
    scale = weights.reshape(len(weights), -1).max(axis=1)
    quantised = np.round(weights / np.maximum(scale, 1e-12)[:, None, None] * 255).astype(np.uint8)
    header: dict[str, Any] = {
        "format": MAP_FORMAT,
        "step": step,
        "layer": view.layer,
        "sample": view.sample,
        "heads": int(weights.shape[0]),
        "q": int(weights.shape[1]),
        "k": int(weights.shape[2]),
        "scale": [float(x) for x in scale],
        "q_labels": view.q_labels,
        "k_labels": view.k_labels,
        "note": view.note,
        "image": None,
    }
    payload = [quantised.tobytes()]
    if image is not None and grid is not None:
        rgb = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        header["image"] = {
            "height": rgb.shape[0],
            "width": rgb.shape[1],
            "grid": list(grid.grid),
            "prefix": grid.prefix_tokens,
        }
        payload.append(rgb.tobytes())
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(4, "little") + encoded + b"".join(payload)


def map_tag(view: AttentionView) -> str:
    """The Attention tab's tag of a view: ``sample_<i>/<layer>``."""
    return f"sample_{view.sample}/{_clean(view.layer)}"


def write_plugin_maps(writer: Any, maps: Sequence[tuple[str, bytes]], step: int) -> None:
    """``(tag, encode_map(...))`` pairs as tensor summaries of the Attention tab's plugin.

    The summary metadata names the plugin and sets ``data_class`` to tensor: without it TensorBoard's
    data provider does not list the data. Per-step content (tokens) lives in the record, not in the
    metadata, of which TensorBoard keeps only the first per tag.
    """
    from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_TENSOR, Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING

    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=b'{"version": 1}'),
        data_class=DATA_CLASS_TENSOR,
    )
    values = [
        Summary.Value(tag=tag, metadata=metadata, tensor=TensorProto(dtype=DT_STRING, string_val=[blob]))
        for tag, blob in maps
    ]
    # SummaryWriter has no public call for a prebuilt Summary; its file writer does (torch and tensorboardX)
    writer._get_file_writer().add_summary(Summary(value=values), step)


def _clean(name: str) -> str:
    return re.sub(r"[^\w.\-/]", "_", name)


class BackgroundWriter:
    """Runs rendering and writing jobs on one daemon thread, through a bounded queue.

    Matplotlib (object API only), PNG encoding and TensorBoard's pure-Python CRC32C then overlap with
    training instead of stalling it. A full queue blocks :meth:`submit` (back-pressure, bounded
    memory). A job that raises becomes a ``RuntimeWarning`` on the next call from the training
    thread, never an exception in training; so do the warnings a job asks for with :meth:`warn`.
    :meth:`close` drains the queue and is safe to repeat.
    """

    def __init__(self, max_pending: int = 4) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max_pending)
        self._messages: list[str] = []  # warnings raised on the training thread, in order
        self._thread = threading.Thread(target=self._run, name="lightning_attnviz-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._raise_warnings()
        if not self._thread.is_alive():  # closed: drop the job rather than fail the training step
            warnings.warn(
                "lightning_attnviz: the picture writer is closed; a capture was dropped.",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self._queue.put(job)

    def flush(self) -> None:
        """Block until every submitted job has run."""
        if self._thread.is_alive():
            self._queue.join()
        self._raise_warnings()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise_warnings()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            except Exception as err:
                self._messages.append(
                    f"lightning_attnviz could not render or write attention pictures ({type(err).__name__}: "
                    f"{err}); training goes on."
                )
            finally:
                self._queue.task_done()

    def warn(self, message: str) -> None:
        """From a job: a ``RuntimeWarning`` to raise on the training thread at its next call."""
        self._messages.append(message)

    def _raise_warnings(self) -> None:
        while self._messages:
            warnings.warn(self._messages.pop(0), RuntimeWarning, stacklevel=3)
