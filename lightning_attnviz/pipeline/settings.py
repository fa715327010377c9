"""The monitor's settings: what ``AttentionMonitor(...)`` was given, checked (by ``config.build_config``)
and frozen. The drawing side receives them in its :class:`~lightning_attnviz.pipeline.messages.Setup`;
nothing changes them during a fit. Each default is written here once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning_attnviz.capture.discover import ModuleSelector
from lightning_attnviz.capture.grid import PatchGrid


@dataclass(frozen=True)
class MonitorConfig:
    """Everything ``AttentionMonitor(...)`` was given, checked. See the callback for each field."""

    every_n_epochs: int = 1
    every_n_steps: int | None = None
    samples: int = 2
    sample_input: Any = None
    forward_fn: Callable | None = None
    modules: ModuleSelector = None
    layers: tuple[int | str, ...] | None = None
    heads: tuple[int, ...] = ()
    tokens: Any = None
    plots: tuple[str, ...] | None = None
    max_tokens: int = 128  # rows/columns a picture draws (= capture.pooling.PICTURE_CELLS at most)
    store_tokens: int = 512
    top_k: int = 3
    log_sanity_check: bool = False
    strip_length: int = 8
    stats: bool = True
    head_stats: bool = False
    histograms: bool = True
    save_captures: bool = True
    sink_tokens: int | None = None
    entropy_collapse: float = 0.02
    uniform_entropy: float = 0.99
    image_grid: PatchGrid | str | None = "auto"
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    rollout_fusion: str = "mean"
    rollout_discard: float = 0.0
    dashboard: bool = True
    dashboard_tokens: int = 512
    name: str | None = None
    # attention health (health.py): max logit, fidelity, value-weighted sink share, and their warnings
    health: bool = True
    max_logit: float = 200.0  # warn above this logit (see health_report.MAX_LOGIT for why)
    logit_growth: float = 4.0  # warn when a layer's max logit grows this much over its first capture
    # gradient-weighted relevance (relevance.py): a separate forward + backward at each capture
    relevance: bool = False
    relevance_target: Callable | None = None

    @property
    def state_id(self) -> str:
        """What tells two monitors of one Trainer apart in a checkpoint (and in the logs)."""
        modules = self.modules
        if callable(modules):  # a predicate's repr holds a memory address: use its qualified name
            modules = getattr(modules, "__qualname__", type(modules).__name__)
        return f"{self.name or ''}|{modules!r}"
