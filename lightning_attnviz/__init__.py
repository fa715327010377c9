"""lightning_attnviz: see what your transformer attends to while it trains.

Public names are imported on first use, so the drawing process and the command line never pay for
importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_attnviz.callback import AttentionMonitor
    from lightning_attnviz.capture.context import AttentionCapture, AttentionMap, capture_attention
    from lightning_attnviz.capture.discover import AttentionSite, find_attention
    from lightning_attnviz.capture.grid import PatchGrid

_WHERE = {
    "AttentionMonitor": "callback",
    "AttentionCapture": "capture.context",
    "AttentionMap": "capture.context",
    "capture_attention": "capture.context",
    "AttentionSite": "capture.discover",
    "find_attention": "capture.discover",
    "PatchGrid": "capture.grid",
}
__all__ = [
    "AttentionCapture",
    "AttentionMap",
    "AttentionMonitor",
    "AttentionSite",
    "PatchGrid",
    "capture_attention",
    "find_attention",
]
__version__ = "0.3.0"


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"lightning_attnviz.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'lightning_attnviz' has no attribute {name!r}")
