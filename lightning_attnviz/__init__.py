"""lightning_attnviz: see what your transformer attends to while it trains."""

from lightning_attnviz.callback import AttentionMonitor
from lightning_attnviz.capture import AttentionCapture, AttentionMap, capture_attention
from lightning_attnviz.discover import AttentionSite, find_attention
from lightning_attnviz.vision import PatchGrid

__all__ = [
    "AttentionCapture",
    "AttentionMap",
    "AttentionMonitor",
    "AttentionSite",
    "PatchGrid",
    "capture_attention",
    "find_attention",
]
__version__ = "0.1.0"
