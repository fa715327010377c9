"""The monitor's settings: what ``AttentionMonitor(...)`` was given, checked (by ``config.build_config``)
and frozen. The drawing side receives them in its :class:`~lightning_attnviz.pipeline.messages.Setup`;
nothing changes them during a fit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lightning_attnviz.analysis.vision import HeadFusion
from lightning_attnviz.capture.discover import ModuleSelector
from lightning_attnviz.capture.grid import PatchGrid

# The max-logit warning levels, from the literature. "Max logit": the largest scaled logit q·k·scale
# (+ mask/bias) entering a head's softmax, as both sources measure it.
# - MAX_LOGIT = 100: Kimi K2 (Kimi Team 2025, "Kimi K2: Open Agentic Intelligence", MuonClip) caps
#   every head's max logit at τ = 100 with QK-Clip, rescaling W_q and W_k of a head that passes it: a
#   production run treats more as a head to be fixed. Past 100 a float32 softmax row is one-hot for
#   any logit gap above ln(2^24) ≈ 16.6. In examples/divergence_demo.py the best learning rate stays
#   below 80 and a 3× larger one passes 400 and learns worse.
# - LOSS_DEGRADES = 1e3 and DIVERGED = 1e4: Wortsman et al. 2023 ("Small-scale proxies for large-scale
#   Transformer training instabilities", §3.1.1, attention logit growth): the loss degrades once the max
#   logit reaches about 1e3, and every run whose logits exceeded 1e4 diverged.
# Each level warns once per layer; the first is the user's `max_logit`, the others stay fixed.
MAX_LOGIT = 100.0
LOSS_DEGRADES = 1e3
DIVERGED = 1e4
# ... or when it has grown this much over its value at the first capture of the fit, once above
# max_logit / 2 (early logits are small: growth from there alone is ordinary learning). A heuristic:
# neither source gives a growth rate; 4× names a trend well before the first level is reached.
LOGIT_GROWTH = 4.0


@dataclass(frozen=True)
class MonitorConfig:
    """Everything ``AttentionMonitor(...)`` was given, checked. The defaults are the callback's (written
    once, in its signature); docs/callback.md says what each field does."""

    every_n_epochs: int
    every_n_steps: int | None
    samples: int
    sample_input: Any
    forward_fn: Callable | None
    modules: ModuleSelector
    layers: tuple[int | str, ...] | None
    heads: tuple[int, ...]
    tokens: Any
    target: Any  # where the decoder's input tokens are in a batch: index, key or (batch) -> ids
    plots: tuple[str, ...] | None
    max_tokens: int
    store_tokens: int
    top_k: int
    log_sanity_check: bool
    strip_length: int
    stats: bool
    head_stats: bool
    histograms: bool
    save_captures: bool
    sink_tokens: int | None
    entropy_collapse: float
    uniform_entropy: float
    image_grid: PatchGrid | Literal["auto"] | None
    image_mean: tuple[float, ...] | None
    image_std: tuple[float, ...] | None
    rollout_fusion: HeadFusion
    rollout_discard: float
    dashboard: bool
    dashboard_tokens: int
    name: str | None
    # attention health (capture/probe.py, pipeline/health.py): max logit, fidelity, value-weighted
    # sink share, and their warnings
    health: bool
    max_logit: float  # warn above this logit (MAX_LOGIT above says why 100)
    logit_growth: float  # warn when a layer's max logit grows this much over its first capture
    # gradient-weighted relevance (capture/relevance.py): a separate forward + backward at each capture
    relevance: bool
    relevance_target: Callable | None

    @property
    def state_id(self) -> str:
        """What tells two monitors of one Trainer apart in a checkpoint (and in the logs)."""
        modules = self.modules
        if callable(modules):  # a predicate's repr holds a memory address: use its qualified name
            modules = getattr(modules, "__qualname__", type(modules).__name__)
        return f"{self.name or ''}|{modules!r}"
