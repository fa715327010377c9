"""Where a capture's :class:`~lightning_attnviz.sinks.base.Outputs` go.

A sink takes the outputs of one capture and writes them the way its tool wants. The TensorBoard
sink runs where the pictures are drawn (the drawing process) and writes an event file of its own in
the logger's directory (``events.out.tfevents.*.attnviz``), so training never spends time on PNGs,
protobufs or checksums: TensorBoard reads every event file of a run directory as one run.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from lightning_attnviz.sinks.base import Outputs


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C; native when ``google_crc32c`` is installed (the pure-Python fallback
    costs ~0.15 s per MB)."""
    try:
        import google_crc32c

        crc = google_crc32c.value(data)
    except ImportError:  # pragma: no cover - the package is a dependency
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c

        crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFile:
    """A TensorBoard event file: TFRecord framing of ``Event`` protos, written once per capture.

    A capture's events are written whole or not at all: a write that fails (a full disk) is cut back
    to the last whole capture, because a torn record would hide every record after it from
    TensorBoard. So the file stays readable, and later captures land once there is space again.
    """

    def __init__(self, directory: str | Path, suffix: str = ".attnviz") -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        Path(directory).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}{suffix}"
        self.path = Path(directory) / name
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open, closed in close()
        self._written = os.fstat(self._file.fileno()).st_size  # bytes of whole captures
        self._pending = bytearray()
        self._event = Event
        self.add(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, event: object) -> None:
        data = event.SerializeToString()  # type: ignore[attr-defined]
        header = struct.pack("<Q", len(data))
        self._pending += (
            header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data))
        )

    def summary(self, values: list, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        if values:
            self.add(self._event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def flush(self) -> None:
        """Write what was added since the last flush, whole; on failure nothing of it stays."""
        data, self._pending = memoryview(bytes(self._pending)), bytearray()
        try:
            while data:
                data = data[self._file.write(data) or 0 :]
        except BaseException:
            os.ftruncate(self._file.fileno(), self._written)
            raise
        self._written = os.fstat(self._file.fileno()).st_size

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _histogram(tag: str, values: object) -> object:
    """A histogram summary of attention weights: 50 even bins over [0, 1] (weights live there), which
    numpy counts without sorting; TensorBoard's default 1,500 log-spaced edges cost a sort per layer."""
    import numpy as np
    from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

    v = np.asarray(values, dtype=np.float64)
    counts, edges = np.histogram(v, bins=50, range=(0.0, 1.0))
    proto = HistogramProto(
        min=float(v.min()),
        max=float(v.max()),
        num=int(v.size),
        sum=float(v.sum()),
        sum_squares=float(np.dot(v, v)),
        bucket_limit=edges[1:].tolist(),
        bucket=counts.astype(np.float64).tolist(),
    )
    return Summary.Value(tag=tag, histo=proto)


class TensorBoardSink:
    """Everything, as TensorBoard shows it: images, scalars, histograms, the module table, the
    custom-scalars layout and the Attention tab's records."""

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = str(log_dir)
        self.what = f"TensorBoard's pictures, scalars and Attention-tab maps (in {self.log_dir})"
        self._file: EventFile | None = None

    def write(self, out: Outputs) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import summary

        from lightning_attnviz.tab.record import tab_value

        if self._file is None:
            self._file = EventFile(self.log_dir)
        f, step = self._file, out.step
        if out.layout is not None:
            f.summary(list(summary.custom_scalars(out.layout).value), step)
        f.summary([v for tag, text in out.text.items() for v in summary.text(tag, text).value], step)
        f.summary([Summary.Value(tag=tag, simple_value=value) for tag, value in out.scalars.items()], step)
        f.summary([_histogram(tag, values) for tag, values in out.histograms.items() if len(values)], step)
        images = [
            Summary.Value(
                tag=p.tag,
                image=Summary.Image(height=p.height, width=p.width, colorspace=3, encoded_image_string=p.png),
            )
            for p in out.pictures
        ]
        f.summary(images, step)
        f.summary([tab_value(tag, blob) for tag, blob in out.tab], step)
        f.summary([tab_value(tag, blob, kind) for kind, tag, blob in out.tab_extra], step)
        f.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
