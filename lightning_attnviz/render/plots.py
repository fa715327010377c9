"""The plot kinds: one vocabulary for the callback's ``plots=``, the drawing plan and the CLI; and the
settings every capture's pictures are drawn with."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_attnviz.analysis.vision import HeadFusion
from lightning_attnviz.capture.grid import PatchGrid

# Per sample and layer, drawn from the token maps (``render.maps``).
TOKEN_PLOTS: tuple[str, ...] = ("heatmap", "heads", "arrows", "atlas", "evolution")
# Per sample and layer over the input image (``render.overlay``); need a patch grid.
IMAGE_PLOTS: tuple[str, ...] = ("overlay", "overlay_heads", "rollout")
# "stats": per metric one layer × head matrix of the whole model per capture (not per sample), so a
# 144-head model needs no 144 scalar series per metric to be read; it belongs to both kinds of run.
TEXT_PLOTS: tuple[str, ...] = (*TOKEN_PLOTS, "stats")
VISION_PLOTS: tuple[str, ...] = (*IMAGE_PLOTS, "stats")
# opt-in: value-weighted attention (Kobayashi et al. 2020) per layer; relevance is drawn with relevance=True
HEALTH_PLOTS: tuple[str, ...] = ("value_weighted",)
ALL_PLOTS = tuple(dict.fromkeys((*TEXT_PLOTS, *VISION_PLOTS, *HEALTH_PLOTS)))
# Defaults: the pictures that answer "what does each layer attend to, and how did it change" without
# drowning TensorBoard; the Attention tab holds every layer × head × step for the rest.
TEXT_DEFAULT_PLOTS: tuple[str, ...] = ("heatmap", "heads", "atlas", "evolution", "stats")
VISION_DEFAULT_PLOTS: tuple[str, ...] = ("overlay", "rollout", "atlas", "evolution", "stats")


def default_plots(plots: tuple[str, ...] | None, vision: bool) -> tuple[str, ...]:
    """``plots`` as given, or the defaults for a vision or a text run."""
    if plots is not None:
        return plots
    return VISION_DEFAULT_PLOTS if vision else TEXT_DEFAULT_PLOTS


@dataclass(frozen=True)
class PictureSettings:
    """What a capture's pictures are drawn with, beyond its maps and images. A saved capture carries
    them, so that the CLI draws the monitor's pictures again by the same code.

    Attributes:
        plots: the picture kinds.
        max_tokens: rows/columns a picture draws at most; longer maps are pooled by the rule.
        keep: leading tokens never pooled (the sink tokens; a grid's prefix tokens always are).
        heads: heads that also get a heatmap of their own.
        top_k: keys per query in the arrow view.
        grid: the image's patch grid (vision runs).
        rollout_fusion, rollout_discard: how rollout fuses heads and what it discards.
    """

    plots: tuple[str, ...]
    max_tokens: int = 128
    keep: int = 1
    heads: tuple[int, ...] = ()
    top_k: int = 3
    grid: PatchGrid | None = None
    rollout_fusion: HeadFusion = "mean"
    rollout_discard: float = 0.0
