"""Write pictures and the module table to TensorBoard. Every tag is built here.

Tag scheme (stable; ``<layer>`` is the capture key, e.g. ``model.layers.0.self_attn``):

- ``attention/sample_<i>/<layer>/heatmap``: head-mean map, query × key, labelled with the tokens
- ``attention/sample_<i>/<layer>/head_<h>``: one head's map (heads chosen with ``heads=``)
- ``attention/sample_<i>/<layer>/heads``: all heads of the layer and their mean, as a grid
- ``attention/sample_<i>/<layer>/arrows``: which token attends to which (top-k lines)
- ``attention/sample_<i>/atlas``: every layer × head of the sample
- ``attention/modules``: text table of the attention modules found, once per fit (the writer
  stores text as ``attention/modules/text_summary``)
"""

from __future__ import annotations

import queue
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from lightning_attnviz.render import Picture

PREFIX = "attention"
MODULES_TAG = f"{PREFIX}/modules"


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


def _clean(name: str) -> str:
    return re.sub(r"[^\w.\-/]", "_", name)


class BackgroundWriter:
    """Runs rendering and writing jobs on one daemon thread, through a bounded queue.

    Matplotlib (object API only), PNG encoding and TensorBoard's pure-Python CRC32C then overlap with
    training instead of stalling it. A full queue blocks :meth:`submit` (back-pressure, bounded
    memory). A job that raises becomes a ``RuntimeWarning`` on the next call from the training
    thread, never an exception in training. :meth:`close` drains the queue and is safe to repeat.
    """

    def __init__(self, max_pending: int = 4) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max_pending)
        self._errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="lightning_attnviz-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._raise_warnings()
        if not self._thread.is_alive():
            raise RuntimeError("BackgroundWriter is closed")
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
                self._errors.append(f"{type(err).__name__}: {err}")
            finally:
                self._queue.task_done()

    def _raise_warnings(self) -> None:
        while self._errors:
            warnings.warn(
                f"lightning_attnviz could not render or write attention pictures ({self._errors.pop(0)}); "
                "training goes on.",
                RuntimeWarning,
                stacklevel=3,
            )
