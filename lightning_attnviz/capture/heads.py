"""Tensor layouts shared by the weights and the health probe: batch dims as heads, and
``nn.MultiheadAttention``'s extra keys and values."""

from __future__ import annotations

import torch
from torch import Tensor


def batch_dims_to_heads(t: Tensor) -> Tensor:
    """View ``(N, ..., L, E)`` as ``(N, H, L, E)``: a 3-D input is one head, extra dims fold into heads."""
    if t.dim() == 3:
        return t.unsqueeze(1)
    if t.dim() > 4:
        return t.flatten(1, -3)
    return t



def append_extra(t: Tensor, bias: Tensor | None, add_zero_attn: bool) -> tuple[Tensor, int]:
    """``nn.MultiheadAttention``'s extra keys (or values): ``bias_k``/``bias_v`` then a zero row, appended
    along the sequence; also how many were appended.

    Shape:
        t: ``(s, S, E)``; returns ``(s, S + extra, E)``.
    """
    s, _, embed = t.shape
    extra = []
    if bias is not None:
        extra.append(bias.detach().float().reshape(1, 1, embed).expand(s, 1, embed))
    if add_zero_attn:
        extra.append(t.new_zeros(s, 1, embed))
    return (torch.cat([t, *extra], dim=1), len(extra)) if extra else (t, 0)
