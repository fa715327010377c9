"""Windowed attention put back on the image's tokens: Swin and Swin-v2 (timm and Hugging Face) and
Twins' locally grouped attention.

A windowed layer runs attention on a ``(batch·windows, N, C)`` batch: the stage's ``(H, W)`` token grid,
rolled by the block's shift (shifted windows), padded to a multiple of the window, cut into windows of
``N = wh·ww`` tokens. Capture keeps the sampled images' per-window weights, as the kernel computed them
(eager) or beside it from the same q, k and mask (fused), and places them back: one ``(heads, H·W, H·W)``
map per image over the stage's tokens in row-major order, each window's weights at its tokens'
positions, the cyclic shift undone (a query's keys are the tokens of its window in the original image),
keys outside the window weight 0 and hidden, the model's window padding removed.

The order of roll and pad is the family's (:class:`WindowGeometry`); each call is checked against what
the model did (the window batch's shape, the shift mask's, the padding slots being the model's zero
rows), and a call that does not fit is declared, never drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_attnviz.capture.pooling import EXACT, Computed, Storage, _Collector
from lightning_attnviz.capture.probe import Health, Probe, logit_max, sdpa_probe
from lightning_attnviz.capture.weights import sdpa_weights

# A shift-mask entry at or below this hides the key: Swin's region mask is 0 or -100 (Hugging Face's
# Swin-v2 adds it twice, -200), so the weight there is exp(-100)-small: not attention within the window.
_HIDDEN_AT = -100.0


@dataclass(frozen=True)
class WindowGeometry:
    """Where the windows of one call lie in the stage's token grid.

    Attributes:
        height, width: the stage's token grid, before the model's padding.
        window: ``(wh, ww)`` tokens per window.
        shift: ``(sh, sw)``: the grid is rolled by ``-shift`` before it is cut (shifted windows).
        pad_first: the grid is padded before it is rolled (Hugging Face); timm rolls, then pads.
    """

    height: int
    width: int
    window: tuple[int, int]
    shift: tuple[int, int] = (0, 0)
    pad_first: bool = False

    @property
    def padded(self) -> tuple[int, int]:
        wh, ww = self.window
        return -(-self.height // wh) * wh, -(-self.width // ww) * ww

    @property
    def windows(self) -> int:
        (hp, wp), (wh, ww) = self.padded, self.window
        return (hp // wh) * (wp // ww)

    @property
    def size(self) -> int:
        """Tokens per window, ``N``."""
        return self.window[0] * self.window[1]

    def slot_tokens(self) -> Tensor:
        """The token (row-major index in the stage grid) at each window slot, ``-1`` for padding.

        Shape:
            ``(windows, N)`` long, windows in row-major order, slots row-major within a window.
        """
        (hp, wp), (wh, ww), (sh, sw) = self.padded, self.window, self.shift
        y, x = torch.arange(hp)[:, None], torch.arange(wp)[None, :]  # coordinates in the cut grid
        if self.pad_first:  # roll(pad(grid)): the padding rolls with the grid
            y, x = (y + sh) % hp, (x + sw) % wp
            real = (y < self.height) & (x < self.width)
        else:  # pad(roll(grid)): the padding stays at the bottom and right
            real = (y < self.height) & (x < self.width)
            y, x = (y + sh) % self.height, (x + sw) % self.width
        token = torch.where(real, y * self.width + x, -1)  # (hp, wp)
        return token.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


@dataclass(frozen=True)
class WindowCall:
    """One call of a windowed module, read before it runs.

    Attributes:
        geometry: where its windows lie.
        tokens: :meth:`WindowGeometry.slot_tokens`, ``(windows, N)``.
        visible: ``(windows, N, N)`` bool, False where the model's shift mask hides a key; ``None``:
            no mask (every key of the window is visible).
        split: the windows have a batch dim of their own (Twins: ``(B, windows, H, N, E)``) instead of
            being folded into the batch (Swin: ``(B·windows, H, N, E)``).
    """

    geometry: WindowGeometry
    tokens: Tensor
    visible: Tensor | None
    split: bool = False

    def rows(self, t: Tensor, samples: int) -> Tensor:
        """The sampled images' windows of a per-window tensor, folded: ``(samples·windows, ...)``."""
        if self.split:
            return t[:samples].flatten(0, 1)
        return t[: samples * self.geometry.windows]


def window_call(reader: str, host: nn.Module, host_call: tuple, call: tuple) -> WindowCall | str:
    """What one call of a windowed module means, or why it cannot be placed back.

    Args:
        reader: ``"timm_swin"``, ``"hf_swin"`` or ``"twins"`` (:func:`~lightning_attnviz.capture.kinds.
            find_reader`).
        host: the module whose call gives the token grid (the Swin block or layer; Twins: the module).
        host_call, call: ``(args, kwargs)`` of the host's and the module's own forward.
    """
    (host_args, host_kwargs), (args, kwargs) = host_call, call
    if reader == "twins":
        x, size = _arg(args, kwargs, 0, "x"), _arg(args, kwargs, 1, "size")
        if not isinstance(x, Tensor) or x.dim() != 3 or size is None:
            return "its call is not (x (B, N, C), size)"
        geometry = WindowGeometry(int(size[0]), int(size[1]), _pair(host.ws))
        if x.shape[1] != geometry.height * geometry.width:
            return f"{x.shape[1]} tokens for a {geometry.height}×{geometry.width} grid"
        return WindowCall(geometry, geometry.slot_tokens(), None, split=True)
    grid = _arg(host_args, host_kwargs, 0, "x" if reader == "timm_swin" else "hidden_states")
    if reader == "timm_swin":  # the block's input is the (B, H, W, C) grid itself
        four = isinstance(grid, Tensor) and grid.dim() == 4
        height, width = (grid.shape[1], grid.shape[2]) if four else (0, 0)
    else:
        dims = _arg(host_args, host_kwargs, 1, "input_dimensions")
        height, width = (int(dims[0]), int(dims[1])) if dims is not None else (0, 0)
    if not isinstance(grid, Tensor) or height * width == 0:
        return "the block's call does not give its token grid"
    geometry = WindowGeometry(
        int(height), int(width), _pair(host.window_size), _pair(host.shift_size), reader == "hf_swin"
    )
    windows, mask = _arg(args, kwargs, 0, "hidden_states"), _arg(args, kwargs, 1, "mask")
    if mask is None:
        mask = kwargs.get("attention_mask")
    return _checked(geometry, grid.shape[0], windows, mask)


def _checked(geometry: WindowGeometry, batch: int, windows: Any, mask: Any) -> WindowCall | str:
    """The call, if the window batch and the shift mask are what ``geometry`` says they are."""
    count, size = geometry.windows, geometry.size
    fits = isinstance(windows, Tensor) and windows.dim() == 3
    if not fits or tuple(windows.shape[:2]) != (batch * count, size):
        got = tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__
        return f"its window batch is {got}, not ({batch}·{count} windows, {size} tokens, C)"
    if mask is not None and (not isinstance(mask, Tensor) or tuple(mask.shape) != (count, size, size)):
        return f"its shift mask is not ({count}, {size}, {size})"
    tokens = geometry.slot_tokens().to(windows.device)
    padding = tokens < 0
    if bool(padding.any()) and bool(windows[:count][padding].ne(0).any()):
        return "its padding slots are not the model's zero rows (an unknown roll and pad order)"
    visible = None
    if mask is not None:
        visible = mask if mask.dtype == torch.bool else mask > _HIDDEN_AT
    return WindowCall(geometry, tokens.cpu(), None if visible is None else visible.detach().cpu())


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, Tensor):
        value = value.tolist()
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


# -- what a tap keeps, and the weights it makes ------------------------------------------------------


@dataclass(frozen=True)
class WindowInputs:
    """What a tap keeps of one windowed call: the sampled images' windows, as the model ran them.

    Exactly one of ``weights`` (eager: the model's own softmax output) and ``q``/``k`` (fused: SDPA's
    arguments, the weights recomputed beside the kernel) is set.

    Shape:
        tokens: ``(windows, N)``; visible: ``(windows, N, N)``; weights: ``(s·windows, H, N, N)``;
        max_logit: ``(s·windows, H)``; q, k, v, out: ``(s·windows, H, N, E)``; mask broadcastable to
        the window scores.
    """

    tokens: Tensor
    grid: tuple[int, int]
    visible: Tensor | None
    weights: Tensor | None = None
    max_logit: Tensor | None = None
    q: Tensor | None = None
    k: Tensor | None = None
    mask: Tensor | None = None
    scale: float | None = None
    v: Tensor | None = None
    out: Tensor | None = None


def window_inputs(
    call: WindowCall,
    samples: int,
    keep: Callable[[Tensor | None], Tensor | None],
    *,
    weights: Tensor | None = None,
    logits: Tensor | None = None,
    q: Tensor | None = None,
    k: Tensor | None = None,
    mask: Tensor | None = None,
    scale: float | None = None,
    v: Tensor | None = None,
    out: Tensor | None = None,
) -> WindowInputs:
    """:class:`WindowInputs` of the first ``samples`` images: each per-window tensor folded to
    ``(s·windows, …)`` and kept with ``keep`` (a detached CPU copy when deferred); ``logits`` (the eager
    softmax's input) only give the max logit."""

    def rows(t: Tensor | None) -> Tensor | None:
        if not isinstance(t, Tensor) or t.is_nested:
            return None
        return keep(call.rows(t, samples).detach())

    if isinstance(mask, Tensor) and mask.dim() == 4 and mask.shape[0] == 1:
        mask = keep(mask.detach())  # one bias for every window (the relative position bias)
    elif isinstance(mask, Tensor):
        mask = rows(mask)
    top = None
    if isinstance(logits, Tensor) and weights is not None and logits.shape == weights.shape:
        top = keep(logit_max(call.rows(logits, samples)))  # (s·windows, H)
    g = call.geometry
    return WindowInputs(
        call.tokens, (g.height, g.width), call.visible, rows(weights), top, rows(q), rows(k), mask,
        scale, rows(v), rows(out),
    )  # fmt: skip


def window_weights(
    x: WindowInputs, storage: Storage, dropout_p: float = 0.0
) -> tuple[Computed, Health]:
    """The dense map of one windowed call: the window weights (the model's, or recomputed from its q, k
    and mask) placed on the stage's tokens, and the health read on the windows (max logit per image and
    head; fidelity to the kernel's output, window by window)."""
    count = x.tokens.shape[0]
    sink_keys = storage.sink_keys
    if x.weights is not None:
        win = x.weights.float()
        health = Probe(sink_keys=sink_keys).result(x.max_logit)
    elif x.q is None or x.k is None:  # WindowInputs holds the weights or q and k
        raise ValueError("a windowed call kept neither its weights nor its q and k")
    else:
        probe = sdpa_probe(x.q, x.v, x.out, dropout_p, sink_keys)
        win = sdpa_weights(x.q, x.k, x.mask, scale=x.scale, samples=x.q.shape[0], probe=probe).weights
        health = probe.result()
    samples = win.shape[0] // count
    win = win.reshape(samples, count, *win.shape[1:])  # (s, windows, H, N, N)
    top = health.max_logit
    if top is not None:
        top = top.reshape(samples, count, -1).amax(1)  # (s, H)
    # value norms and the sink share are per window (each window's first slot): not the image's
    health = replace(health, max_logit=top, value_norms=None, value_sink=None)
    return place(win, x.tokens, x.visible, x.grid[0] * x.grid[1], storage), health


def place(
    win: Tensor,
    tokens: Tensor,
    visible: Tensor | None,
    length: int,
    storage: Storage = EXACT,
) -> Computed:
    """Window weights placed on the stage's tokens: keys outside a query's window, and keys the shift
    mask hides, weigh 0 and are hidden; padding slots are dropped. Each window entry is scattered to
    its place (pooled, straight into its block), and the row statistics read the compact rows, so the
    cost is O(L·N) however large the stage; only an exact map costs its O(L²) zeros.

    Shape:
        win: ``(s, windows, H, N, N)``; tokens: ``(windows, N)``; visible: ``(windows, N, N)``;
        result: ``(s, H, length, length)``.
    """
    samples, count, heads, size, _ = win.shape
    real = tokens >= 0
    keys_ok = real[:, None, :].expand(count, size, size)
    if visible is not None:
        keys_ok = keys_ok & visible
    slot = torch.full((length,), -1, dtype=torch.long)
    slot[tokens[real]] = torch.arange(count * size).view(count, size)[real]
    if bool((slot < 0).any()):
        raise ValueError(f"{int((slot < 0).sum())} of {length} tokens lie in no window")
    window_of, row_of = slot // size, slot % size  # each query token's window and slot
    ok, keys = keys_ok[window_of, row_of], tokens[window_of]  # (L, N): its window's keys
    rows = win[:, window_of, :, row_of, :].permute(1, 2, 0, 3)  # (s, H, L, N), query tokens in order
    rows = rows.float().masked_fill(~ok, 0.0)
    collector = _Collector(samples, heads, length, length, storage, torch.device("cpu"))
    if collector.stats is not None:
        collector.stats.update(0, rows, ok[None, None], keys=torch.where(ok, keys, length))
    queries = torch.arange(length)[:, None].expand(length, size)
    collector.scatter(queries[ok], keys[ok], rows[..., ok])
    full = None
    if not collector.pooled:  # the exact map's mask: its windows' visible keys
        seen = torch.zeros(length * length, dtype=torch.bool)
        seen[queries[ok] * length + keys[ok]] = True
        full = None if bool(seen.all()) else seen.view(1, 1, length, length)
    return collector.result(full)
