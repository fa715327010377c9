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

import re
from collections.abc import Sequence
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
