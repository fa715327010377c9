"""Where the tokens of a vision transformer sit in its image: the patch grid, read off timm and
Hugging Face models or given by hand. The maths over a grid lives in
:mod:`~lightning_attnviz.analysis.vision`.

A ViT's sequence is ``[prefix tokens..., patches...]``: the prefix holds the CLS token and, where the
model has them, distillation and register tokens; the patches follow in row-major order. Nothing here
imports timm or transformers: the ``grid_from_*`` helpers only read attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class PatchGrid:
    """Where each token of a ViT sequence sits in the image.

    Build one by hand for your own ViT (``PatchGrid((14, 14), prefix_tokens=1, patch_size=(16, 16))``)
    or read it off a model with :func:`grid_from_timm` / :func:`grid_from_hf`.

    Attributes:
        grid: ``(rows, cols)`` of patches; tokens after the prefix are patches in row-major order.
        prefix_tokens: tokens before the patches (CLS, distillation, registers; order
            ``[cls, registers..., patches...]``); 0 for models without a CLS token.
        patch_size: ``(h, w)`` of a patch in pixels (an int means square); used for pixel distances
            and to place heat over the image.
    """

    grid: tuple[int, int]
    prefix_tokens: int
    patch_size: tuple[int, int]

    def __post_init__(self) -> None:
        # Normalised here so that numpy/torch ints and int patch sizes compare and hash as plain tuples.
        object.__setattr__(self, "grid", _pair(self.grid, "grid"))
        object.__setattr__(self, "patch_size", _pair(self.patch_size, "patch_size"))
        if isinstance(self.prefix_tokens, bool) or int(self.prefix_tokens) != self.prefix_tokens:
            raise ValueError(f"`prefix_tokens` must be an int >= 0, got {self.prefix_tokens!r}")
        if self.prefix_tokens < 0:
            raise ValueError(f"`prefix_tokens` must be an int >= 0, got {self.prefix_tokens!r}")
        object.__setattr__(self, "prefix_tokens", int(self.prefix_tokens))

    @property
    def rows(self) -> int:
        return self.grid[0]

    @property
    def cols(self) -> int:
        return self.grid[1]

    @property
    def patches(self) -> int:
        return self.rows * self.cols

    @property
    def length(self) -> int:
        """Tokens in the sequence: prefix plus patches."""
        return self.prefix_tokens + self.patches

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels covered by the patches (a model may have dropped a remainder)."""
        return self.rows * self.patch_size[0], self.cols * self.patch_size[1]

    def split(self, length: int) -> tuple[slice, slice]:
        """Check a sequence length and return the slices of the prefix and the patch tokens.

        A wrong grid (another image size, a missed register token) would otherwise surface as a
        reshape error far from its cause, or worse, as a plausible but shifted picture.

        Raises:
            ValueError: ``length`` is not ``prefix_tokens + rows * cols``.
        """
        if length != self.length:
            raise ValueError(
                f"attention sequence length does not match the patch grid: expected {self.prefix_tokens} "
                f"prefix + {self.rows}×{self.cols} patches = {self.length} tokens, got {length} "
                "(another image size? pass it to grid_from_timm/grid_from_hf; registers or a "
                "distillation token? set `prefix_tokens`)"
            )
        return slice(0, self.prefix_tokens), slice(self.prefix_tokens, self.length)

    def labels(self) -> list[str]:
        """A label per token: ``CLS`` and ``pre<i>`` (registers, distillation) for the prefix, ``r,c`` for
        the patch at row r, column c."""
        prefix = ["CLS"] + [f"pre{i}" for i in range(1, self.prefix_tokens)] if self.prefix_tokens else []
        return prefix + [f"{r},{c}" for r in range(self.rows) for c in range(self.cols)]

    def stage(self, grid: tuple[int, int]) -> PatchGrid:
        """The same image on another token grid: a later stage of a hierarchical model (Swin, Twins),
        whose resolution halves at each patch merging. No prefix tokens; each token covers
        ``ceil(image / grid)`` pixels (the model pads an odd grid before merging it)."""
        rows, cols = _pair(grid, "grid")
        height, width = self.image_size
        return PatchGrid((rows, cols), 0, (-(-height // rows), -(-width // cols)))

    def centers(self) -> np.ndarray:
        """Pixel centre ``(y, x)`` of every patch, in token order.

        Shape:
            ``(rows * cols, 2)``.
        """
        r, c = np.divmod(np.arange(self.patches), self.cols)
        return np.stack([(r + 0.5) * self.patch_size[0], (c + 0.5) * self.patch_size[1]], axis=1)


def stage_grid(image: PatchGrid | None, stage: tuple[int, int]) -> PatchGrid:
    """The token grid a windowed map lies on: ``image``'s grid at that stage (:meth:`PatchGrid.stage`),
    or, without an image grid, the stage's own grid with one-pixel patches (for pooling and labels)."""
    return image.stage(stage) if image is not None else PatchGrid((stage[0], stage[1]), 0, (1, 1))


def grid_from_timm(model: Any, image_size: int | tuple[int, int] | None = None) -> PatchGrid:
    """The patch grid of a timm ViT (``VisionTransformer``, DeiT, EVA, …: any model with
    ``patch_embed`` and ``num_prefix_tokens``).

    Args:
        model: the timm model (a ``torch.compile`` wrapper is looked through).
        image_size: ``(H, W)`` of the images you feed it. Needed for ``dynamic_img_size`` models fed
            another size than they were built for, and for models built with ``img_size=None``;
            ``None`` uses the size the model was built for.

    Raises:
        ValueError: the model has no ``patch_embed``/``num_prefix_tokens``, or no image size is known.
    """
    model = getattr(model, "_orig_mod", model)
    embed = getattr(model, "patch_embed", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if embed is None or prefix is None or getattr(embed, "patch_size", None) is None:
        raise ValueError(
            f"`model` must be a timm ViT with `patch_embed.patch_size` and `num_prefix_tokens`, got "
            f"{type(model).__name__}; build a PatchGrid(grid, prefix_tokens, patch_size) by hand instead"
        )
    patch = _pair(embed.patch_size, "patch_embed.patch_size")
    if image_size is not None:
        size = _pair(image_size, "image_size")
        if hasattr(embed, "dynamic_feat_size"):  # timm's own rule: floor, or ceil with dynamic padding
            grid = tuple(embed.dynamic_feat_size(size))
        else:
            grid = (size[0] // patch[0], size[1] // patch[1])
    elif getattr(embed, "grid_size", None) is not None:
        grid = tuple(embed.grid_size)
    else:
        raise ValueError("`image_size` is required: the model was built without a fixed `img_size`")
    return PatchGrid(grid=grid, prefix_tokens=int(prefix), patch_size=patch)


def grid_from_hf(
    config: Any, image_size: int | tuple[int, int] | None = None, prefix_tokens: int | None = None
) -> PatchGrid:
    """The patch grid of a Hugging Face ViT-style model (ViT, DeiT, DINOv2, DINOv2 with registers).

    Args:
        config: the model's ``config`` (reads ``image_size``, ``patch_size``, ``num_register_tokens``
            and ``model_type``).
        image_size: ``(H, W)`` of the images you feed it, when it differs from ``config.image_size``
            (``interpolate_pos_encoding=True``, or DINOv2, whose config says 518 but usually sees 224).
        prefix_tokens: override the count of tokens before the patches. The default is 1 (CLS) plus
            ``num_register_tokens``, and 2 for ``model_type == "deit"`` (HF's DeiT always adds a
            distillation token).

    Raises:
        ValueError: the config lacks ``patch_size`` or the image is smaller than one patch.
    """
    patch_value = getattr(config, "patch_size", None)
    size_value = image_size if image_size is not None else getattr(config, "image_size", None)
    if patch_value is None or size_value is None:
        raise ValueError(
            f"`config` must have `patch_size` and `image_size` (or pass `image_size`), got "
            f"{type(config).__name__}"
        )
    patch = _pair(patch_value, "config.patch_size")
    size = _pair(size_value, "image_size")
    if prefix_tokens is None:
        distilled = getattr(config, "model_type", "") == "deit"
        prefix_tokens = 1 + int(distilled) + int(getattr(config, "num_register_tokens", 0) or 0)
    grid = (size[0] // patch[0], size[1] // patch[1])  # HF's strided conv drops a remainder
    return PatchGrid(grid=grid, prefix_tokens=prefix_tokens, patch_size=patch)


def _pair(value: Any, name: str) -> tuple[int, int]:
    """An int or a pair of ints (any int-like: numpy, torch, list) as a tuple of two positive ints."""
    items = [value, value] if np.ndim(value) == 0 else list(value)
    try:
        pair = tuple(int(v) for v in items)
        exact = all(float(v) == p for v, p in zip(items, pair, strict=True))
    except (TypeError, ValueError):
        exact, pair = False, ()
    if len(pair) != 2 or not exact or min(pair) < 1 or any(isinstance(v, bool) for v in items):
        raise ValueError(f"`{name}` must be a positive int or a pair of positive ints, got {value!r}")
    return pair


def find_grid(model: torch.nn.Module) -> PatchGrid | None:
    """The patch grid of the first timm or Hugging Face vision transformer inside ``model``, or ``None``.

    Reads attributes only: a timm ViT has ``patch_embed.grid_size`` and ``num_prefix_tokens``; a timm
    Swin has ``patch_embed.grid_size`` and blocks with ``window_size`` and ``shift_size``; timm Twins has
    ``patch_embeds`` (one per stage, the first with ``H``, ``W``); a Hugging Face vision model has a
    ``config`` with ``patch_size`` and ``image_size`` (Swin's ``model_type`` says it has no CLS token).
    For a hierarchical model this is the first stage's grid; later stages are :meth:`PatchGrid.stage`.
    """
    for module in model.modules():
        embed = getattr(module, "patch_embed", None)
        if getattr(embed, "grid_size", None) is not None and hasattr(module, "num_prefix_tokens"):
            return grid_from_timm(module)
        if embed is not None and getattr(embed, "grid_size", None) is not None and _has_windows(module):
            return PatchGrid(tuple(embed.grid_size), 0, _pair(embed.patch_size, "patch_embed.patch_size"))
        embeds = getattr(module, "patch_embeds", None)
        first = embeds[0] if isinstance(embeds, torch.nn.ModuleList) and len(embeds) else None
        if first is not None and isinstance(getattr(first, "H", None), int) and hasattr(first, "patch_size"):
            grid = _pair((first.H, first.W), "grid")  # what PatchGrid itself checks the grid with
            return PatchGrid(grid, 0, _pair(first.patch_size, "patch_embeds[0].patch_size"))
        config = getattr(module, "config", None)
        if all(getattr(config, k, None) is not None for k in ("patch_size", "image_size")):
            windowed = "swin" in str(getattr(config, "model_type", ""))  # windows over patches, no CLS
            return grid_from_hf(config, prefix_tokens=0 if windowed else None)
    return None


def _has_windows(model: torch.nn.Module) -> bool:
    return any(hasattr(m, "window_size") and hasattr(m, "shift_size") for m in model.modules())
