"""The fixed samples: how they are taken from a batch, run through the model, labelled and shown."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from lightning_attnviz.capture.grid import PatchGrid

MAX_LABEL_CHARS = 40  # a label is shown at most this long (a 10,000-character vocabulary entry stays legible)

Tokens = None | Sequence[str] | Mapping[int, str] | Callable[[list[int]], Sequence[str]] | Any


def default_forward(pl_module: Any, inputs: Any) -> Any:
    """``pl_module(x)`` for a tensor, ``pl_module(batch[0])`` for a tuple/list, ``pl_module(**d)``
    for a dict."""
    if isinstance(inputs, Mapping):
        return pl_module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return pl_module(inputs[0])
    return pl_module(inputs)


def first_rows(batch: Any, samples: int) -> Any:
    """The first ``samples`` rows of every batched tensor in ``batch``, detached, cloned, on the CPU.

    A tensor is batched when its first dimension is the batch size (the most common first dimension
    among the batch's tensors); others (a 0-d temperature, a shared table) are kept whole.
    """
    batch_size = batch_rows(batch)

    def rows(t: Tensor) -> Tensor:
        t = t.detach()
        if t.dim() > 0 and t.shape[0] == batch_size:
            t = t[:samples]
        return t.to("cpu", copy=True)

    return apply_to_collection(batch, Tensor, rows)


def batch_rows(batch: Any) -> int:
    """How many rows the batched tensors of ``batch`` have: their most common first dimension (0 when
    none)."""
    return batch_size([t.shape[0] for t in tensors(batch) if t.dim() > 0]) or 0


def batch_size(first_dims: Sequence[int]) -> int | None:
    """The batch size among tensors' first dimensions: the most common one (``None`` when empty)."""
    return max(set(first_dims), key=list(first_dims).count) if first_dims else None


def tensors(inputs: Any) -> list[Tensor]:
    """Every tensor in a batch (tensors, tuples, lists, dicts)."""
    found: list[Tensor] = []
    apply_to_collection(inputs, Tensor, found.append)
    return found


def token_ids(inputs: Any) -> Tensor | None:
    """The token ids of the fixed samples: ``input_ids`` of a dict, else the first integer tensor."""
    if isinstance(inputs, Mapping) and isinstance(inputs.get("input_ids"), Tensor):
        return inputs["input_ids"]
    found: list[Tensor] = []
    apply_to_collection(inputs, Tensor, lambda t: found.append(t) if not t.is_floating_point() else None)
    ids = [t for t in found if t.dim() == 2 and t.dtype not in (torch.bool,)]
    return ids[0] if ids else None


def sample_token_ids(fixed: Any, count: int) -> tuple[np.ndarray, ...]:
    """The first ``count`` samples' token ids (:func:`token_ids`), one int64 ``(T,)`` array each, ``-1``
    where a dict batch's ``attention_mask`` is 0 (padding), for the role scores' patterns; ``()`` when
    the samples have none (images, embeddings given directly)."""
    ids = token_ids(fixed)
    if ids is None:
        return ()
    ids = ids[:count].detach().cpu().long()
    mask = fixed.get("attention_mask") if isinstance(fixed, Mapping) else None
    if isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape[-1] == ids.shape[-1]:
        ids = ids.masked_fill(mask[: len(ids)].cpu() == 0, -1)
    return tuple(row.numpy() for row in ids)


def token_labeller(tokens: Tokens) -> Callable[[list[int]], Sequence[str]] | None:
    """``ids -> labels`` from a tokenizer, a vocabulary (list or dict) or a function; ``None``: positions.

    Raises:
        TypeError: ``tokens`` is none of these.
    """
    if tokens is None:
        return None
    if hasattr(tokens, "convert_ids_to_tokens"):
        return tokens.convert_ids_to_tokens
    if isinstance(tokens, Mapping):
        return lambda ids: [str(tokens.get(i, i)) for i in ids]
    if isinstance(tokens, Sequence) and not isinstance(tokens, str):
        return lambda ids: [str(tokens[i]) if 0 <= i < len(tokens) else str(i) for i in ids]
    if callable(tokens):
        return tokens
    raise TypeError(
        "`tokens` must be None, a tokenizer with convert_ids_to_tokens, a vocabulary (list or dict "
        f"id -> str) or a function ids -> labels; got {type(tokens).__name__}"
    )


def token_labels(
    fixed: Any, labeller: Callable[[list[int]], Sequence[str]] | None, grid: PatchGrid | None, count: int
) -> list[list[str] | None]:
    """Labels per sample: decoded token ids, or for images CLS / prefix then patches by row and column,
    or ``None`` (positions)."""
    ids = token_ids(fixed)
    if ids is None or labeller is None:
        return [None if grid is None else grid.labels()] * count
    return [[short_label(str(t)) for t in labeller(row.tolist())] for row in ids[:count]]


def short_label(label: str) -> str:
    """A label cut in the middle to :data:`MAX_LABEL_CHARS`, keeping both ends."""
    if len(label) <= MAX_LABEL_CHARS:
        return label
    half = (MAX_LABEL_CHARS - 1) // 2
    return label[:half] + "…" + label[-(MAX_LABEL_CHARS - 1 - half) :]


def images(fixed: Any, mean: Sequence[float] | None, std: Sequence[float] | None) -> list[np.ndarray]:
    """The fixed samples' images as the user sees them: ``pixel_values`` of a dict, else the first
    float tensor shaped ``(N, C, H, W)``, un-normalised with ``mean``/``std``."""
    found: list[Tensor] = []
    if isinstance(fixed, Mapping) and isinstance(fixed.get("pixel_values"), Tensor):
        found.append(fixed["pixel_values"])
    found += [t for t in tensors(fixed) if t.is_floating_point() and t.dim() == 4]
    return [unnormalize(image, mean, std) for image in found[0].float()] if found else []


def target_ids(inputs: Any) -> tuple[Tensor | None, bool]:
    """The decoder's token ids: ``decoder_input_ids`` (or ``tgt``, ``nn.Transformer``'s name for it),
    else ``labels`` (``True``: to be shifted right as the model does, the decoder start token first);
    ``(None, False)`` when none is given."""
    if not isinstance(inputs, Mapping):
        return None, False
    for name, shifted in (("decoder_input_ids", False), ("tgt", False), ("labels", True)):
        ids = inputs.get(name)
        if isinstance(ids, Tensor) and ids.dim() == 2 and not ids.is_floating_point():
            return ids, shifted
    return None, False


def has_target(inputs: Any) -> bool:
    """Whether the batch carries decoder inputs: ids (:func:`target_ids`), embeddings, or a second
    float sequence (``nn.Transformer``'s ``tgt``) in a tuple batch."""
    if isinstance(inputs, Mapping):
        return any(
            isinstance(inputs.get(k), Tensor)
            for k in ("decoder_input_ids", "decoder_inputs_embeds", "labels", "tgt")
        )
    if isinstance(inputs, (tuple, list)) and len(inputs) > 1:
        return all(isinstance(t, Tensor) and t.is_floating_point() and t.dim() == 3 for t in inputs[:2])
    return False


Target = None | int | str | Callable[[Any], Any]  # where the decoder's input is in a batch (see `target=`)


def select_target(fixed: Any, target: Target) -> Tensor:
    """The decoder's token ids in the fixed samples, where ``target`` says they are: an index into a
    tuple or list batch, a key of a dict batch, or ``(batch) -> ids``.

    Raises:
        ValueError: ``target`` does not lead to a 2-D integer tensor (the caller warns and shows positions).
    """
    if callable(target):
        ids = target(fixed)
    elif isinstance(target, int) and isinstance(fixed, (tuple, list)):
        ids = fixed[target] if target < len(fixed) else None
    elif isinstance(target, str) and isinstance(fixed, Mapping):
        ids = fixed.get(target)
    else:
        ids = None
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        got = f"a tensor {tuple(ids.shape)} {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(
            f"`target={target!r}` must pick the decoder's token ids, a (batch, T) integer tensor, out of "
            f"the {type(fixed).__name__} batch; it gave {got}"
        )
    return ids


def axis_labels(
    fixed: Any,
    labeller: Callable[[list[int]], Sequence[str]] | None,
    grid: PatchGrid | None,
    count: int,
    target: Target = None,
    encoder_decoder: bool = False,
) -> dict[str, list[list[str] | None]]:
    """Labels per sample for each token axis a map can have (see ``AttentionMap.axes``).

    ``"source"``: :func:`token_labels` (``input_ids``, or the image grid). ``"target"``: the decoder's
    tokens from ``target`` (:func:`select_target`), else ``decoder_input_ids`` or ``labels`` shifted
    right (``"<start>"`` first, ``-100`` shown as ``"<pad>"``). A target axis is never labelled with
    source tokens: positions (``None``) when the decoder's input is not known (``nn.Transformer`` fed a
    tuple, or embeddings). Only a decoder-only model (no cross-attention: ``encoder_decoder`` False, no
    decoder input in the batch) reads its own input on the "target" axis, so it gets the source labels.

    Raises:
        ValueError: ``target`` does not pick token ids out of ``fixed``.
    """
    source = token_labels(fixed, labeller, grid, count)
    ids: Tensor | None
    if target is not None:
        ids, shifted = select_target(fixed, target), False
    elif has_target(fixed) or encoder_decoder:
        ids, shifted = target_ids(fixed)
    else:
        return {"source": source, "target": source}
    if ids is None or labeller is None:
        return {"source": source, "target": [None] * count}
    rows: list[list[str] | None] = []
    for row in ids[:count].tolist():
        known = row[:-1] if shifted else row
        words = [
            short_label(str(t)) if i >= 0 else "<pad>"
            for i, t in zip(known, labeller([max(i, 0) for i in known]), strict=False)
        ]
        rows.append(["<start>", *words] if shifted else words)
    return {"source": source, "target": rows}


def unnormalize(
    image: torch.Tensor | np.ndarray,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
) -> np.ndarray:
    """A model input image, back to displayable RGB in ``[0, 1]``.

    Layout is read from the shape: 2-D is grayscale; 3-D with 1 or 3 channels first is ``CHW``
    (PyTorch's layout, preferred when both ends could be channels), otherwise 1 or 3 channels last is
    ``HWC``. ``uint8`` input is divided by 255 first. Grayscale is repeated to three channels.

    With ``mean`` and ``std`` (per channel, or one value for all), the normalisation
    ``(x - mean) / std`` is undone and the result clipped to ``[0, 1]``. Without them (the callback
    cannot know your transform), each image is min-max scaled to ``[0, 1]`` over all its channels
    together, which keeps colours in proportion; a constant image becomes black.

    Raises:
        ValueError: not a single 2-D/3-D image with 1 or 3 channels, only one of ``mean``/``std``
            given, or their length does not match the channels.

    Shape:
        image: ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)`` with ``C`` in {1, 3}; returns ``(H, W, 3)``.
    """
    raw = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    x = raw.astype(np.float64) / (255.0 if raw.dtype == np.uint8 else 1.0)
    if x.ndim == 2:
        x = x[:, :, None]
    elif x.ndim == 3 and x.shape[0] in (1, 3):
        x = np.moveaxis(x, 0, -1)
    elif not (x.ndim == 3 and x.shape[-1] in (1, 3)):
        raise ValueError(
            f"`image` must be one (H, W), (C, H, W) or (H, W, C) image with C in (1, 3), got shape "
            f"{tuple(raw.shape)}" + ("; take one image, e.g. images[0]" if x.ndim == 4 else "")
        )
    channels = x.shape[-1]
    if (mean is None) != (std is None):
        raise ValueError(f"`mean` and `std` must be given together, got mean={mean!r}, std={std!r}")
    if mean is not None and std is not None:
        m, s = _per_channel(mean, channels, "mean"), _per_channel(std, channels, "std")
        x = np.clip(x * s + m, 0.0, 1.0)
    else:
        low, high = np.nanmin(x), np.nanmax(x)
        x = (x - low) / (high - low) if high > low else np.zeros_like(x)
    x = np.nan_to_num(x)
    return np.repeat(x, 3, axis=-1) if channels == 1 else x



def _per_channel(value: float | Sequence[float], channels: int, name: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.size not in (1, channels):
        raise ValueError(f"`{name}` must have 1 or {channels} values (one per channel), got {v.size}")
    return v
