"""The one ``TorchFunctionMode`` signature capture implements: :class:`FunctionMode`.

Both function modes (the taps' interceptor and relevance's) see every torch call made while a watched
site runs; they only differ in what they do with it, so the protocol's signature and its ``None``
kwargs live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from torch.overrides import TorchFunctionMode


class FunctionMode(TorchFunctionMode):
    """A ``TorchFunctionMode`` that hands each call to :meth:`on_call` with its kwargs as a dict."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return self.on_call(func, args, kwargs or {})

    def on_call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """What the call returns to the model (the mode is off while this runs: torch calls are plain)."""
        raise NotImplementedError
