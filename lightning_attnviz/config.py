"""The monitor's configuration: built once from the callback's flat keyword arguments, validated,
frozen. Every stage reads it; nothing changes it during a fit."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from lightning_attnviz.analysis.vision import HEAD_FUSIONS
from lightning_attnviz.capture.blocks import PICTURE_CELLS
from lightning_attnviz.capture.discover import ModuleSelector
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.samples import first_rows, tensors, token_labeller
from lightning_attnviz.pipeline.settings import MonitorConfig
from lightning_attnviz.render.plots import ALL_PLOTS
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
)

_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")


def build_config(**kwargs: Any) -> MonitorConfig:
    """Check every argument; raise ``TypeError``/``ValueError`` naming the first wrong one."""
    k = dict(kwargs)
    k["every_n_epochs"] = check_int("every_n_epochs", k["every_n_epochs"], minimum=0)
    k["every_n_steps"] = check_int("every_n_steps", k["every_n_steps"], minimum=1, optional=True)
    k["samples"] = check_int("samples", k["samples"], minimum=1)
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
        check_bool(name, k.get(name, False))
    for name, low, default in (("max_logit", 0, 200.0), ("logit_growth", 1, 4.0)):
        k[name] = check_float(name, k.get(name, default), low, math.inf, what="a number")
    check_callable("relevance_target", k.get("relevance_target"), "(output) -> Tensor")
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
    token_labeller(k["tokens"])  # raises TypeError for what cannot label tokens
    if k["sample_input"] is not None:
        if not tensors(k["sample_input"]):
            raise TypeError(
                "`sample_input` must be a tensor or a batch (tuple, list, dict) holding tensors, "
                f"got {type(k['sample_input']).__name__}"
            )
        k["sample_input"] = first_rows(k["sample_input"], k["samples"])
    name = k["name"]
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        raise ValueError(f"`name` must be None or 1-40 letters, digits, '_' or '-', got {name!r}")
    return MonitorConfig(**k)


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
