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
    setattr(forward, TAP_MARK, tap)
    return install_attr(module, "forward", forward)


def install_attr(module: nn.Module, name: str, value: Callable[..., Any]) -> Callable[[], None]:
    """Set ``module.<name>`` on this instance only; return the function that restores what it had."""
    had_own = name in module.__dict__
    previous = module.__dict__.get(name)
    setattr(module, name, value)

    def restore() -> None:
        if had_own:
            setattr(module, name, previous)
        else:
            module.__dict__.pop(name, None)

    return restore


def is_tapped(module: nn.Module) -> bool:
    """Whether ``module``'s forward is already one of our reading wrappers."""
    return bool(getattr(module.forward, TAP_MARK, False))
