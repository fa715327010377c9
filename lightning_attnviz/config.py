"""The monitor's configuration: built once from the callback's flat keyword arguments, validated,
frozen. Every stage reads it; nothing changes it during a fit."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from lightning_attnviz.analysis.vision import HEAD_FUSIONS
from lightning_attnviz.capture.blocks import PICTURE_CELLS
from lightning_attnviz.capture.discover import AttentionSite, ModuleSelector
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.samples import batch_rows, first_rows, tensors, token_labeller
from lightning_attnviz.pipeline.settings import MonitorConfig
from lightning_attnviz.render.plots import ALL_PLOTS, IMAGE_PLOTS
from lightning_attnviz.util.checks import (
    check_bool,
    check_callable,
    check_choice,
    check_float,
    check_int,
    check_list,
    check_rgb_stats,
    is_index,
    is_layer_selector,
    missing_heads_message,
)

_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")


def build_config(**kwargs: Any) -> MonitorConfig:
    """Check every argument; raise ``TypeError``/``ValueError`` naming the first wrong one."""
    k = dict(kwargs)
    for check in (_check_schedule, _check_diagnostics, _check_selection, _check_inputs):
        check(k)  # each group in turn, so the first wrong argument is the one named
    return MonitorConfig(**k)


def _check_schedule(k: dict[str, Any]) -> None:
    """When and how much to capture: the schedule, samples, map sizes (normalised in k)."""
    k["every_n_epochs"] = check_int("every_n_epochs", k["every_n_epochs"], minimum=0)
    k["every_n_steps"] = check_int("every_n_steps", k["every_n_steps"], minimum=1, optional=True)
    k["samples"] = check_int("samples", k["samples"], minimum=1)
    if k["every_n_epochs"] == 0 and k["every_n_steps"] is None and not k["log_sanity_check"]:
        raise ValueError(
            "`every_n_epochs=0` turns epoch captures off, and with `every_n_steps=None` nothing would "
            "ever be captured: give `every_n_epochs` >= 1 or `every_n_steps`"
        )
    for name, minimum in (("max_tokens", 2), ("store_tokens", 2), ("dashboard_tokens", 2), ("top_k", 1)):
        k[name] = check_int(name, k[name], minimum=minimum)
    if k["max_tokens"] > PICTURE_CELLS:
        raise ValueError(
            f"`max_tokens` (rows/columns a picture draws) must be an int in [2, {PICTURE_CELLS}], got "
            f"{k['max_tokens']}; the maps stored for the tab and the capture files keep up to "
            "`store_tokens` and `dashboard_tokens`"
        )
    k["strip_length"] = check_int("strip_length", k["strip_length"], minimum=2)
    k["sink_tokens"] = check_int("sink_tokens", k["sink_tokens"], minimum=1, optional=True)


def _check_diagnostics(k: dict[str, Any]) -> None:
    """Switches, image grid, rollout, and the health and relevance thresholds (normalised in k)."""
    for name in ("log_sanity_check", "stats", "head_stats", "histograms", "save_captures", "dashboard"):
        check_bool(name, k[name])
    grid = k["image_grid"]
    if not (grid is None or grid == "auto" or isinstance(grid, PatchGrid)):
        raise TypeError(f"`image_grid` must be 'auto', None or a PatchGrid, got {grid!r}")
    check_choice("rollout_fusion", k["rollout_fusion"], HEAD_FUSIONS)
    k["rollout_discard"] = check_float(
        "rollout_discard", k["rollout_discard"], 0, 1, high_open=True, what="a fraction"
    )
    for name in ("entropy_collapse", "uniform_entropy"):
        k[name] = check_float(name, k[name], 0, 1, what="a number (normalised entropy)")
    check_callable("forward_fn", k["forward_fn"], "(pl_module, inputs) -> Any")
    for name in ("health", "relevance"):
        check_bool(name, k[name])
    for name, low in (("max_logit", 0), ("logit_growth", 1)):
        k[name] = check_float(name, k[name], low, math.inf, what="a number")
    check_callable("relevance_target", k["relevance_target"], "(output) -> Tensor")
    if k["relevance_target"] is not None and not k["relevance"]:
        raise ValueError("`relevance_target` is only used with `relevance=True`, got relevance=False")


def _check_selection(k: dict[str, Any]) -> None:
    """What is drawn: plot kinds, heads, layers, modules, the images' normalisation (normalised in k)."""
    k["plots"] = check_list(
        "plots", k["plots"], lambda p: isinstance(p, str), "plot kinds", optional=True, choices=ALL_PLOTS
    )
    k["heads"] = check_list("heads", k["heads"], is_index, "head indices >= 0")
    k["layers"] = check_list(
        "layers", k["layers"], is_layer_selector, "layer indices or names/globs", optional=True
    )
    k["modules"] = _check_modules(k["modules"])
    k["image_mean"] = check_rgb_stats("image_mean", k["image_mean"], positive=False)
    k["image_std"] = check_rgb_stats("image_std", k["image_std"], positive=True)
    if (k["image_mean"] is None) != (k["image_std"] is None):
        raise ValueError(
            "`image_mean` and `image_std` undo the images' normalisation together: pass both or "
            f"neither, got image_mean={k['image_mean']!r} and image_std={k['image_std']!r}"
        )


def _check_inputs(k: dict[str, Any]) -> None:
    """What is read from the data: token labels, decoder target, sample input; the name (normalised in k)."""
    token_labeller(k["tokens"])  # raises TypeError for what cannot label tokens
    _check_target(k["target"])
    if k["sample_input"] is not None:
        if not tensors(k["sample_input"]):
            raise TypeError(
                "`sample_input` must be a tensor or a batch (tuple, list, dict) holding tensors, "
                f"got {type(k['sample_input']).__name__}"
            )
        k["sample_input"] = first_rows(k["sample_input"], k["samples"])
        if batch_rows(k["sample_input"]) == 0:
            raise ValueError(
                "`sample_input` must hold at least one row (a batched tensor whose first dimension is "
                f"the samples), got tensors of shapes {[tuple(t.shape) for t in tensors(k['sample_input'])]}"
            )
    name = k["name"]
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        raise ValueError(f"`name` must be None or 1-40 letters, digits, '_' or '-', got {name!r}")


def _check_target(target: Any) -> None:
    """``target``: where the decoder's input is in a batch."""
    if target is None or callable(target) or isinstance(target, str):
        return
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(
            "`target` must be None, an index into a tuple batch (int >= 0), a key of a dict batch (str) or "
            f"a callable (batch) -> decoder token ids, got {target!r}"
        )
    if target < 0:
        raise ValueError(f"`target` must be an index >= 0 into a tuple batch, got {target}")


def _check_modules(modules: Any) -> ModuleSelector:
    if modules is None or callable(modules):
        return modules
    if isinstance(modules, str):
        return modules
    if isinstance(modules, Sequence) and not isinstance(modules, bytes):
        bad = [m for m in modules if not isinstance(m, str)]
        if bad or not modules:
            raise TypeError(
                f"`modules` must be None, a name or glob, a non-empty list of them, or a predicate "
                f"(name, module) -> bool; {bad[0] if bad else modules!r} is not a name, got {modules!r}"
            )
        return tuple(modules)
    raise TypeError(
        "`modules` must be None, a name or glob, a list of them, or a predicate (name, module) -> bool, "
        f"got {modules!r}"
    )


def setup_problems(config: MonitorConfig, sites: list[AttentionSite], grid: PatchGrid | None) -> list[str]:
    """Arguments that cannot work with this model, each said once when the fit starts: picture kinds
    that need an image grid the model lacks, and heads beyond a watched layer's (where the module says
    how many it has; the drawing side checks the others at the first capture)."""
    problems = []
    vision = [p for p in config.plots or () if p in IMAGE_PLOTS]
    if vision and grid is None:
        problems.append(
            f"AttentionMonitor: `plots` asks for {vision}, which draw attention over an image's patch "
            f"grid, but no grid was found in this model (image_grid={config.image_grid!r}); they are not "
            "drawn. Pass `image_grid=PatchGrid(...)` for a vision transformer that is not found "
            "automatically, or leave them out."
        )
    heads = missing_heads_message(config.heads, {s.name: s.num_heads for s in sites if s.num_heads})
    if heads is not None:
        problems.append(heads)
    return problems
