"""The drawing side of attention health: scalars, warnings, the module table's fidelity column, and the
pictures (the max-logit matrix, value-weighted attention, relevance). Plain functions of what
:func:`~lightning_attnviz.capture.inputs.compute` and :mod:`~lightning_attnviz.capture.relevance`
produced; the pipeline runs each as a step of its own."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_attnviz.analysis.views import make_views
from lightning_attnviz.analysis.vision import cls_to_patches, mean_received
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.inputs import AttentionMap
from lightning_attnviz.capture.probe import Health
from lightning_attnviz.capture.relevance import RelevanceMap
from lightning_attnviz.pipeline.settings import DIVERGED, LOSS_DEGRADES, MAX_LOGIT
from lightning_attnviz.render.maps import Picture, draw_head_grid, heatmap
from lightning_attnviz.render.overlay import overlay
from lightning_attnviz.render.stats import Metric, draw_stats, matrix_picture
from lightning_attnviz.sinks.base import head_scalars
from lightning_attnviz.sinks.tags import Tags
from lightning_attnviz.util.once import Once

_LEVELS = {
    LOSS_DEGRADES: "loss degrades from about 1e3 (Wortsman et al. 2023)",
    DIVERGED: "every run whose attention logits exceeded 1e4 diverged (Wortsman et al. 2023)",
}


class HealthWarnings:
    """Warnings about logits that grow towards one-hot attention (once per layer and rule) and maps
    that do not reproduce the kernel's output (once per layer)."""

    def __init__(self, max_logit: float, growth: float) -> None:
        self.max_logit, self.growth = max_logit, growth
        self.first: dict[str, float] = {}  # each layer's max logit at its first capture
        self.warned = Once()  # growth:<layer>, fidelity:<layer>, max:<layer>:<level>

    def check(self, layer: str, health: Health, step: int) -> list[str]:
        messages = []
        top = _layer_max(health.max_logit)
        if top is not None:
            first = self.first.setdefault(layer, top)
            messages += self._levels(layer, top, step)
            grown = first > 0 and top >= self.growth * first and top > self.max_logit / 2
            if grown and self.warned.first(f"growth:{layer}"):
                messages.append(
                    f"AttentionMonitor: the largest attention logit of {layer!r} grew from {first:.1f} to "
                    f"{top:.1f} (×{top / first:.1f} ≥ logit_growth={self.growth:g}) by step {step}. "
                    "Attention logit growth precedes divergence (Dehghani et al. 2023; Wortsman et al. "
                    "2023); qk-layernorm or a lower learning rate are the usual remedies."
                )
        rel, tolerance = health.relative_error, health.tolerance
        if (
            rel is not None
            and tolerance is not None
            and rel > tolerance
            and self.warned.first(f"fidelity:{layer}")
        ):
            messages.append(_unfaithful(layer, rel, tolerance, step))
        return messages

    def _levels(self, layer: str, top: float, step: int) -> list[str]:
        """One warning per level passed for the first time: ``max_logit``, then 1e3 and 1e4 above it."""
        levels = {self.max_logit: "", **{v: why for v, why in _LEVELS.items() if v > self.max_logit}}
        passed = [v for v in levels if top > v and self.warned.first(f"max:{layer}:{v:g}")]
        if not passed:
            return []
        level = max(passed)  # a jump past two levels at once says the higher one
        where = f"{level:g}, where {levels[level]}" if levels[level] else f"max_logit={self.max_logit:g}"
        if level == self.max_logit == MAX_LOGIT:
            where += ", the cap Kimi K2's QK-Clip enforces"
        return [
            f"AttentionMonitor: the largest attention logit of {layer!r} is {top:.1f} at step {step}, above "
            f"{where}: softmax is close to one-hot there. Growing attention logits precede divergence "
            "(Dehghani et al. 2023; Wortsman et al. 2023); qk-layernorm, QK-Clip or a lower learning rate "
            "are the usual remedies."
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"first": dict(self.first), "warned": self.warned.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first = {str(k): float(v) for k, v in state.get("first", {}).items()}
        self.warned = Once(state.get("warned", []))


def _unfaithful(layer: str, rel: float, tolerance: float, step: int) -> str:
    return (
        f"AttentionMonitor: the captured weights of {layer!r} do not reproduce the model's "
        f"attention output at step {step}: relative error {rel:.2g} > {tolerance:.2g} "
        "(max |A·V − output| / max |output|). The maps drawn for it are not what the "
        "kernel computed; please report the module."
    )


def _layer_max(max_logit: Tensor | None) -> float | None:
    if max_logit is None:
        return None
    finite = max_logit[torch.isfinite(max_logit)]
    return float(finite.max()) if finite.numel() else None


def health_scalars(into: dict[str, float], tags: Tags, layer: str, health: Health, heads: bool) -> None:
    """``attention_health/{max_logit,fidelity,value_sink}/<layer>`` (per head with ``heads``)."""
    top = _layer_max(health.max_logit)
    if top is not None:
        into[tags.health("max_logit", layer)] = top
        if heads and health.max_logit is not None:
            per_head = health.max_logit.amax(0)
            for h, value in enumerate(per_head.tolist()):
                if math.isfinite(value):
                    into[tags.health("max_logit", layer, h)] = value
    if health.error is not None and math.isfinite(health.error):
        into[tags.health("fidelity", layer)] = health.error
    if health.value_sink is not None and health.value_sink.shape[0]:
        sinks = np.nanmean(health.value_sink.numpy(), axis=0)  # (s, H) -> (H,)
        head_scalars(into, partial(tags.health, "value_sink", layer), sinks, np.mean, heads)


def max_logit_matrix(layers: Sequence[str], healths: Sequence[Health]) -> np.ndarray:
    """``(layers, heads)`` of the largest logit per head (over samples), NaN where unknown."""
    rows = [h.max_logit.amax(0).double().numpy() if h.max_logit is not None else np.zeros(0) for h in healths]
    out = np.full((len(layers), max((r.size for r in rows), default=0)), np.nan)
    for i, row in enumerate(rows):
        out[i, : row.size] = np.where(np.isfinite(row), row, np.nan)
    return out


def fidelity_cell(health: Health | None, path: str) -> str:
    """The module table's fidelity column: max |error| and whether it is within the tolerance."""
    if health is None or health.error is None:
        if path == "eager_softmax":
            return "not checked (no weights @ values product seen after the softmax)"
        return "not checked (no output to compare: dropout, a fused layer or a compiled kernel)"
    rel = health.relative_error or 0.0
    verdict = "ok" if health.tolerance is None or rel <= health.tolerance else "MISMATCH"
    return f"{health.error:.1e} ({verdict})"


def module_table(rows: Sequence[tuple[str, ...]], records: Sequence[AttentionMap]) -> str:
    """The module table with a fidelity column: the largest error over each module's calls."""
    worst: dict[str, AttentionMap] = {}
    for r in records:
        h, best = r.health, worst.get(r.module)
        if h is not None and h.error is not None:
            if best is None or best.health is None or (best.health.error or 0) < h.error:
                worst[r.module] = r
        elif best is None:
            worst[r.module] = r
    header = "| module | type | heads | captured via | fidelity (max abs error) |\n|---|---|---|---|---|\n"
    lines = []
    for row in rows:
        found = worst.get(row[0])
        cell = fidelity_cell(found.health if found else None, found.path if found else "")
        lines.append("| " + " | ".join((*row, cell)) + " |\n")
    return header + "".join(lines)


MAX_LOGIT_METRIC = Metric(
    "max_logit",
    "largest attention logit",
    "the largest scaled logit (q·k·scale + mask/bias) entering the softmax at a visible position, over the "
    "fixed samples' rows; growth towards one-hot softmax precedes divergence (Dehghani et al. 2023)",
    None,
    None,
    ("", "logit"),
    1,
)


def max_logit_pictures(records: Sequence[AttentionMap], step: int) -> list[Picture]:
    """``attention/stats/max_logit``: one layer × head matrix, as the other stats pictures."""
    known = [r for r in records if r.health is not None and r.health.max_logit is not None]
    if not known:
        return []
    layers = [r.key for r in known]
    values = max_logit_matrix(layers, [r.health for r in known if r.health is not None])
    if not np.isfinite(values).any():
        return []
    title = (MAX_LOGIT_METRIC.title, f"step {step} · {len(layers)} layers × {values.shape[1]} heads")
    image = draw_stats(values, layers, MAX_LOGIT_METRIC, title, change=False).image
    return [matrix_picture(values, layers, MAX_LOGIT_METRIC, image)]


def value_weighted_pictures(
    records: Sequence[AttentionMap], labels: list, max_tokens: int, step: int, keep: int = 1
) -> list[Picture]:
    """Per sample and layer, every head's ``‖α_ij·f(v_j)‖`` (rows renormalised to 1, so the colour
    scale reads as for raw maps) and their mean, for maps captured exactly."""
    pictures = []
    for r in records:
        h = r.health
        if h is None or h.value_norms is None or r.block != (1, 1):
            continue
        moved = r.weights * h.value_norms[:, :, None, :].to(r.weights.dtype)
        total = moved.sum(-1, keepdim=True)
        weighted = torch.where(total > 0, moved / total.clamp_min(1e-30), 0.0)
        f = (
            "‖α_ij · W_O^h v_j‖ (out_proj's head slice)"
            if h.projected
            else "‖α_ij · v_j‖ (no out_proj: not visible at SDPA)"
        )
        for view in make_views([replace(r, weights=weighted)], labels, max_tokens, keep=keep):
            title = (f"{view.layer} · value-weighted", f"sample {view.sample} · step {step}")
            note = f"{f}, Kobayashi et al. 2020; rows renormalised" + (f"; {view.note}" if view.note else "")
            image = draw_head_grid(replace(view, note=note), title).image
            pictures.append(Picture("value_weighted", view.sample, view.layer, image))
    return pictures


def relevance_pictures(
    maps: Sequence[RelevanceMap],
    labels: Sequence[Sequence[str] | None],
    grid: PatchGrid | None,
    images: Sequence[np.ndarray],
    step: int,
) -> list[Picture]:
    """``attention/sample_<i>/relevance``: over the image for a ViT (the CLS row over the patches, or the
    mean row without a CLS token), else a token map of the target's row. The identity ``R`` starts
    from is left out (every token is relevant to itself)."""
    pictures = []
    for m in maps:
        gained = m.matrix - np.eye(m.matrix.shape[0], dtype=m.matrix.dtype)
        note = (
            f"R = I + Σ Ā·R over {len(m.layers)} layers, Ā = mean over heads of (∇A ⊙ A)⁺ "
            f"(Chefer et al. 2021); target: {m.target}; identity left out"
        )
        title = ("gradient-weighted relevance", f"sample {m.sample} · step {step}")
        if grid is not None and m.matrix.shape[0] == grid.length and m.sample < len(images):
            heat = (
                cls_to_patches(gained[None], grid)[0]
                if grid.prefix_tokens
                else mean_received(gained[None], grid)[0]
            )
            image = overlay(images[m.sample], heat, title, note, grid.patch_size)
        else:
            tokens = labels[m.sample] if m.sample < len(labels) else None
            keys = (
                [str(t) for t in tokens]
                if tokens is not None and len(tokens) == gained.shape[1]
                else [str(i) for i in range(gained.shape[1])]
            )
            row = np.clip(gained[m.row : m.row + 1], 0, None)
            image = heatmap(row, None, [f"row {m.row}"], keys, title, note + f"; row {m.row} ({keys[m.row]})")
        pictures.append(Picture("relevance", m.sample, None, image))
    return pictures


def health_groups(
    plots: Sequence[str],
    records: list[AttentionMap],
    labels: list,
    job: Any,
    max_tokens: int,
    health: bool,
    keep: int = 1,
) -> list[tuple[str, Callable[[], list[Picture]]]]:
    """``(kind, draw)`` per health picture this capture asks for, each drawn (and failing) on its own
    (relevance is drawn with the pictures a saved capture can draw again: ``plan.view_groups``)."""
    groups: list[tuple[str, Callable[[], list[Picture]]]] = []
    if health and "stats" in plots:
        groups.append(("max_logit", lambda: max_logit_pictures(records, job.step)))
    if "value_weighted" in plots:
        groups.append(
            ("value_weighted", lambda: value_weighted_pictures(records, labels, max_tokens, job.step, keep))
        )
    return groups
