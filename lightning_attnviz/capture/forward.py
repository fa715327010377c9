"""Replacing one module instance's ``forward`` and putting it back: the one way capture installs
anything on a model. Per instance, never on the class, so other instances (and other models) keep
their own forward; the restore puts back exactly what the instance had, an own attribute or none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

TAP_MARK = "_attnviz_tap"  # set on our forwards that read inputs: a shared module is wrapped once


def install_forward(module: nn.Module, forward: Callable[..., Any], tap: bool = True) -> Callable[[], None]:
    """Make ``forward`` this instance's forward; return the function that restores the previous one."""
    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    setattr(forward, TAP_MARK, tap)
    module.forward = forward  # type: ignore[method-assign]

    def restore() -> None:
        if had_own:
            module.forward = previous  # type: ignore[method-assign]
        else:
            module.__dict__.pop("forward", None)

    return restore


def is_tapped(module: nn.Module) -> bool:
    """Whether ``module``'s forward is already one of our reading wrappers."""
    return bool(getattr(module.forward, TAP_MARK, False))
