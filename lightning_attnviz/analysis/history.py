"""What the pictures and warnings need from past captures: the evolution strips, the drift, and the
diagnostics' counters. Bounded, typed, with a ``state_dict`` small enough for a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lightning_attnviz.analysis.views import AttentionView, LayerStats, js_divergence


@dataclass(frozen=True)
class Strip:
    """The evolution of one sample's layer: head-mean ``(q, k)`` float32 maps, oldest first, with the
    step and epoch of each capture."""

    maps: list[np.ndarray]
    steps: list[int]
    epochs: list[int]


UNIFORM_CAPTURES = 3  # a head uniform at this many captures in a row gets a warning
# rows/columns of the maps the history keeps (the evolution strip's panels and the drift), pooled by the
# one rule beyond it: the checkpointed history stays small however large the pictures are
HISTORY_TOKENS = 64


@dataclass
class _Entry:
    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    means: list[np.ndarray] = field(default_factory=list)  # float16 (q, k) head means, oldest first
    heads: np.ndarray | None = None  # float16 (H, q, k) of the last capture, for the drift


class History:
    """Per (sample, layer): the head-mean maps of the last ``length`` captures and the per-head map
    of the last one, pooled (≤ :data:`HISTORY_TOKENS` per side) and stored as float16."""

    def __init__(self, length: int = 8) -> None:
        self.length = length
        self._entries: dict[tuple[int, str], _Entry] = {}

    def add(self, view: AttentionView, step: int, epoch: int) -> np.ndarray | None:
        """Record ``view``; the drift per head since the previous capture (``None`` for the first
        capture, or when the map's shape changed, which also restarts the strip)."""
        entry = self._entries.setdefault((view.sample, view.layer), _Entry())
        drift = None
        if entry.heads is not None and entry.heads.shape == view.weights.shape:
            drift = js_divergence(entry.heads.astype(np.float32), view.weights)
        elif entry.heads is not None:
            entry.steps, entry.epochs, entry.means = [], [], []
        entry.steps = [*entry.steps, step][-self.length :]
        entry.epochs = [*entry.epochs, epoch][-self.length :]
        entry.means = [*entry.means, view.head_mean()[0].astype(np.float16)][-self.length :]
        entry.heads = view.weights.astype(np.float16)
        return drift

    def strip(self, sample: int, layer: str) -> Strip | None:
        entry = self._entries.get((sample, layer))
        if entry is None or not entry.means:
            return None
        return Strip(maps=[m.astype(np.float32) for m in entry.means], steps=entry.steps, epochs=entry.epochs)

    def state_dict(self) -> dict[str, Any]:
        return {
            "entries": [
                {
                    "sample": sample,
                    "layer": layer,
                    "steps": list(e.steps),
                    "epochs": list(e.epochs),
                    "means": [torch.from_numpy(m.copy()) for m in e.means],
                    "heads": None if e.heads is None else torch.from_numpy(e.heads.copy()),
                }
                for (sample, layer), e in self._entries.items()
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore, keeping this history's own ``length`` (the argument of the resumed run wins)."""
        keep = slice(-self.length, None)
        self._entries = {
            (e["sample"], e["layer"]): _Entry(
                steps=list(e["steps"])[keep],
                epochs=list(e["epochs"])[keep],
                means=[m.numpy() for m in e["means"]][keep],
                heads=None if e["heads"] is None else e["heads"].numpy(),
            )
            for e in state.get("entries", [])
        }


class Diagnostics:
    """Warnings about attention that has gone wrong: entropy collapse (once per layer) and heads that
    stay uniform (once per head, after :data:`UNIFORM_CAPTURES` captures in a row)."""

    def __init__(self, entropy_collapse: float, uniform_entropy: float) -> None:
        self.entropy_collapse = entropy_collapse
        self.uniform_entropy = uniform_entropy
        self.collapsed: set[str] = set()
        self.uniform_runs: dict[tuple[str, int], int] = {}

    def check(self, stats: list[LayerStats], step: int) -> list[str]:
        """The warnings this capture's statistics raise."""
        messages = []
        for st in stats:
            norm = st.entropy_norm
            finite = norm[np.isfinite(norm)]
            if finite.size and finite.mean() < self.entropy_collapse and st.layer not in self.collapsed:
                self.collapsed.add(st.layer)
                messages.append(
                    f"AttentionMonitor: attention entropy collapsed in {st.layer!r} at step {step}: "
                    f"normalised entropy {finite.mean():.3f} < entropy_collapse={self.entropy_collapse} "
                    "(each query attends to about one key). Entropy collapse is a known sign of unstable "
                    "training."
                )
            for head, value in enumerate(norm):
                key = (st.layer, head)
                runs = self.uniform_runs.get(key, 0)
                self.uniform_runs[key] = runs + 1 if value > self.uniform_entropy else 0
                if self.uniform_runs[key] == UNIFORM_CAPTURES:
                    messages.append(
                        f"AttentionMonitor: head {head} of {st.layer!r} has stayed uniform for "
                        f"{UNIFORM_CAPTURES} captures (normalised entropy {value:.3f} > "
                        f"uniform_entropy={self.uniform_entropy}): it attends to everything equally."
                    )
        return messages

    def state_dict(self) -> dict[str, Any]:
        return {
            "collapsed": sorted(self.collapsed),
            "uniform_runs": [[*k, v] for k, v in self.uniform_runs.items()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.collapsed = set(state.get("collapsed", []))
        self.uniform_runs = {(layer, head): runs for layer, head, runs in state.get("uniform_runs", [])}
