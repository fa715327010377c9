"""Independent references for windowed, banded and block-sparse attention, built by the tests' own code.

Windows: the model's own eager weights (its softmax output, or its outputs with ``output_attentions``),
placed back by running the model's *own* partition code (``window_partition`` after ``torch.roll`` and
``F.pad`` in the family's order) on a grid of token indices — never the capture's geometry. Longformer:
Hugging Face's band layout and global rows (``output_attentions``) written out densely. BigBird: the
layer's inputs and output, read with hooks, so a map can be checked by what it reproduces.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def place_back(weights, tokens, visible, length, samples=2):
    """Dense ``(samples, H, L, L)`` maps from ``(B·windows, H, N, N)`` window weights: ``tokens``
    ``(windows, N)`` is the token under each slot (``-1``: padding), ``visible`` ``(windows, N, N)``
    what the model's shift mask leaves (``None``: everything)."""
    count = tokens.shape[0]
    out = torch.zeros(samples, weights.shape[1], length, length, dtype=torch.float64)
    for b in range(samples):
        for w in range(count):
            real = tokens[w] >= 0
            block = weights[b * count + w].double()
            if visible is not None:
                block = block.masked_fill(~visible[w], 0.0)
            index = tokens[w][real]
            out[b][:, index[:, None], index[None, :]] = block[:, real][:, :, real]
    return out.float()


def _index_grid(height, width):
    return torch.arange(height * width, dtype=torch.float32).view(1, height, width, 1)


def timm_swin_reference(model, images, samples=2):
    """``{site: dense map}`` for a timm Swin / Swin-v2: each block's eager softmax output (a copy with
    fusion off), placed back through ``window_partition`` of the rolled, then padded, token indices."""
    from timm.models.swin_transformer import window_partition

    eager = copy.deepcopy(model)
    seen, grids = {}, {}
    for name, block in eager.named_modules():
        if not (hasattr(block, "shift_size") and hasattr(block, "_attn")):
            continue
        block.attn.fused_attn = False
        block.attn.softmax.register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, o.detach()))
        block.register_forward_pre_hook(lambda m, a, n=name: grids.__setitem__(n, a[0].shape[1:3]))
    with torch.no_grad():
        eager(images)
    out = {}
    for name, weights in seen.items():
        block = dict(eager.named_modules())[name]
        (height, width), (wh, ww), (sh, sw) = grids[name], block.window_size, block.shift_size
        rolled = torch.roll(_index_grid(height, width), (-sh, -sw), (1, 2))
        padded = F.pad(rolled, (0, 0, 0, -width % ww, 0, -height % wh), value=-1)
        tokens = window_partition(padded, (wh, ww)).reshape(-1, wh * ww).long()
        mask = block.attn_mask
        visible = None if mask is None else mask == 0
        out[f"{name}.attn"] = place_back(weights, tokens, visible, height * width, samples)
    return out


def hf_swin_reference(eager, pixel_values, samples=2):
    """``{site: dense map}`` for a Hugging Face Swin / Swin-v2 built with eager attention: each layer's
    weights (``output_attentions``), placed back through the model's ``window_partition`` of the padded,
    then rolled, token indices, with the layer's own shift mask."""
    from transformers.models.swin.modeling_swin import window_partition

    seen, dims = {}, {}
    modules = dict(eager.named_modules())
    for name, module in modules.items():
        if hasattr(module, "maybe_pad") and hasattr(module, "shift_size"):
            module.register_forward_pre_hook(
                lambda m, a, n=name: dims.__setitem__(n, tuple(int(v) for v in a[1])), with_kwargs=False
            )
            inner = module.attention.self if hasattr(module.attention, "self") else module.attention
            site = name + (".attention.self" if hasattr(module.attention, "self") else ".attention")
            inner.register_forward_hook(lambda m, a, o, s=site: seen.__setitem__(s, o[1].detach()))
    with torch.no_grad():
        eager(pixel_values=pixel_values, output_attentions=True)
    out = {}
    for site, weights in seen.items():
        layer_name = site.removesuffix(".self").removesuffix(".attention")
        layer = modules[layer_name]
        (height, width), size, shift = dims[layer_name], layer.window_size, layer.shift_size
        hp, wp = height + (-height % size), width + (-width % size)
        padded = F.pad(_index_grid(height, width), (0, 0, 0, wp - width, 0, hp - height), value=-1)
        rolled = torch.roll(padded, (-shift, -shift), (1, 2)) if shift else padded
        tokens = window_partition(rolled, size).reshape(-1, size * size).long()
        mask = layer.get_attn_mask(hp, wp, torch.float32, torch.device("cpu"))
        out[site] = place_back(weights, tokens, None if mask is None else mask == 0, height * width, samples)
    return out


def twins_reference(model, images, samples=2):
    """``{site: dense map}`` for timm Twins' locally grouped attention: the eager weights recomputed in
    float64 from each module's own ``qkv`` on its input, grouped as the module groups (pad, then cut
    ``ws × ws`` windows), placed back through the same cut of the padded token indices."""
    seen = {}

    def grab(module, args, name):
        x, (height, width) = args
        batch, _, channels = x.shape
        ws, heads = module.ws, module.num_heads
        grid = F.pad(x.view(batch, height, width, channels), (0, 0, 0, -width % ws, 0, -height % ws))
        hp, wp = grid.shape[1:3]
        index = F.pad(torch.arange(height * width, dtype=torch.float32).view(height, width),
                      (0, wp - width, 0, hp - height), value=-1)  # fmt: skip
        tokens = index.reshape(hp // ws, ws, wp // ws, ws).transpose(1, 2).reshape(-1, ws * ws).long()
        windows = grid.reshape(batch, hp // ws, ws, wp // ws, ws, channels).transpose(2, 3)
        qkv = F.linear(windows.double(), module.qkv.weight.double(), module.qkv.bias.double())
        q, k, _ = qkv.reshape(batch, -1, ws * ws, 3, heads, channels // heads).permute(3, 0, 1, 4, 2, 5)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(channels // heads)).softmax(-1)  # (B, windows, H, N, N)
        seen[name] = place_back(attn.flatten(0, 1), tokens, None, height * width, samples)

    handles = [
        m.register_forward_pre_hook(lambda m, a, n=n: grab(m, a, n))
        for n, m in model.named_modules()
        if type(m).__name__ == "LocallyGroupedAttn"
    ]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return seen


def longformer_reference(model, samples=2, **inputs):
    """Dense maps of a Longformer, written out from Hugging Face's own ``output_attentions``: the first
    columns of ``attentions`` are the global keys, the rest the band ``i − w … i + w``; a global token's
    row is its column of ``global_attentions``. Each key's weight sums every entry that refers to it."""
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    glob = inputs["global_attention_mask"].bool()
    length = glob.shape[1]
    maps = []
    for attn, global_attn in zip(out.attentions, out.global_attentions, strict=True):
        dense = torch.zeros(samples, attn.shape[1], length, length, dtype=torch.float64)
        extra = int(glob.sum(1).max())
        window = (attn.shape[-1] - extra - 1) // 2
        for b in range(samples):
            index = glob[b].nonzero().flatten()
            dense[b][:, :, index] += attn[b, :, :, : len(index)].double()
            for c in range(2 * window + 1):
                rows = torch.arange(length)
                keys = rows - window + c
                ok = (keys >= 0) & (keys < length)
                dense[b][:, rows[ok], keys[ok]] += attn[b, :, rows[ok], extra + c].double()
            for g, token in enumerate(index.tolist()):
                dense[b][:, token, :] = global_attn[b, :, :length, g].double()
        maps.append(dense.float())
    return maps


def bigbird_calls(model, **inputs):
    """Each block-sparse layer's input hidden states, its value projection and its output, read with
    hooks during one forward: ``{site: (values (B, H, L, hd), output (B, H, L, hd))}``, and Hugging
    Face's own dense reconstruction (``output_attentions``)."""
    calls, handles = {}, []

    def grab(module, args, result, name):
        hidden = args[0]
        batch, length, _ = hidden.shape
        heads = module.num_attention_heads
        values = module.value(hidden).view(batch, length, heads, -1).transpose(1, 2)
        calls[name] = (values.detach(), result[0].view(batch, length, heads, -1).transpose(1, 2).detach())

    for name, module in model.named_modules():
        if type(module).__name__ == "BigBirdBlockSparseAttention":
            handles.append(module.register_forward_hook(lambda m, a, r, n=name: grab(m, a, r, n)))
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    return calls, out.attentions


def no_attributes_left(model: nn.Module) -> None:
    """No per-instance attribute of the capture is left on any module (forward, torch_gather_b2, …)."""
    for name, module in model.named_modules():
        own = [k for k, v in module.__dict__.items() if callable(v) and not isinstance(v, nn.Module)]
        assert not [k for k in own if k in ("forward", "_attn", "torch_gather_b2")], (name, own)
