"""What a tap may use of the capture that installed it: the :class:`Recorder` protocol.

:class:`~lightning_attnviz.capture.context.AttentionCapture` implements it; the taps
(:mod:`~lightning_attnviz.capture.taps`, :mod:`~lightning_attnviz.capture.readers`) only see this,
so they record calls and read a little shared state without reaching into the capture itself.
"""

from __future__ import annotations

from typing import Any, Protocol, overload

import torch
from torch import Tensor

from lightning_attnviz.capture.discover import AttentionSite
from lightning_attnviz.capture.inputs import Inputs, Path, SoftmaxOutput
from lightning_attnviz.capture.kinds import CallInputs
from lightning_attnviz.capture.windows import WindowCall


class Recorder(Protocol):
    """What a tap may use of the capture that installed it."""

    samples: int  # rows of the batch that are kept
    scope: list[AttentionSite]  # function-tap sites whose forward is running, innermost last
    entered: set[str]  # sites whose forward ran in this capture
    flex_calls: list[tuple[str, tuple, dict]]  # FlexAttention calls not yet recorded
    padded_width: int | None  # set by nn.TransformerEncoder for nested inputs
    call: CallInputs  # what the model's own forward was given
    windows: dict[str, WindowCall]  # windowed sites whose forward is running: where their windows lie

    @overload
    def keep(self, t: Tensor) -> Tensor: ...
    @overload
    def keep(self, t: None) -> None: ...
    def keep(self, t: Tensor | None) -> Tensor | None: ...

    def add(self, name: str, inputs: Inputs, path: Path, **meta: Any) -> None: ...

    def hold(self, name: str, inputs: SoftmaxOutput, shape: torch.Size, **meta: Any) -> None: ...

    def held_shape(self, name: str) -> torch.Size | None: ...

    def complete(self, values: Tensor | None, product: Tensor | None) -> None: ...

    def skip(self, name: str, message: str, stacklevel: int = 3) -> None: ...

    def record_flex(self) -> None: ...
