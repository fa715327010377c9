"""Find the attention modules of a model, by type and name, without running it."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from lightning_attnviz.capture.kinds import TOKEN, Axis, Layout, axes_of, classify, find_reader, is_special

ModuleSelector = None | str | Sequence[str] | Callable[[str, nn.Module], bool]
Tap = Literal["mha", "encoder_layer", "function"]

# Class names that mark an attention module in timm, Hugging Face, nanoGPT and hand-written code.
_ATTENTION_CLASS = re.compile(r"attention|attn", re.IGNORECASE)
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class AttentionSite:
    """One attention module and how its weights are captured.

    Attributes:
        name: qualified name in ``model.named_modules()``; captured maps are keyed by it.
        module_type: the module's class name.
        tap: ``"mha"`` recomputes ``nn.MultiheadAttention`` weights from its projections;
            ``"encoder_layer"`` does the same from an ``nn.TransformerEncoderLayer``'s input, because
            PyTorch's fused fast path never calls that layer's ``self_attn``; ``"function"``
            watches the module's ``scaled_dot_product_attention`` / softmax calls.
        num_heads: heads, when the module says so.
        fused: whether the module uses a fused kernel (timm's ``fused_attn``), when it says so.
        layout: what its weights mean (:func:`~lightning_attnviz.capture.kinds.classify`) and how
            capture reads a windowed, banded or block-sparse one (``layout.reader``); an unsupported
            layout is not tapped, and its note says why.
        axes: (query, key) axis of its maps: ``"source"`` or ``"target"`` (decoder) tokens.
    """

    name: str
    module_type: str
    tap: Tap
    num_heads: int | None = None
    fused: bool | None = None
    layout: Layout = TOKEN
    axes: tuple[Axis, Axis] = ("source", "source")


def find_attention(model: nn.Module, modules: ModuleSelector = None) -> list[AttentionSite]:
    """The attention sites of ``model``, in ``named_modules()`` order.

    Args:
        model: any ``nn.Module``.
        modules: ``None`` finds ``nn.MultiheadAttention`` and modules whose class name contains
            "Attention" or "Attn", keeping the innermost when they nest (the root only if it is not a
            training wrapper with a ``training_step``); a name, glob pattern
            (``"blocks.*.attn"``) or list of them; or a predicate ``(name, module) -> bool``.

    Raises:
        ValueError: a name or pattern in ``modules`` matches no module.
        TypeError: ``modules`` is none of the above.
        RuntimeError: the predicate raised (its exception is chained).
    """
    named = named_modules(model)
    if modules is None:
        # A training wrapper (a LightningModule named "LitAttention", say) is never an attention site.
        root_ok = not callable(getattr(model, "training_step", None))
        chosen = _innermost([n for n, m in named.items() if (n or root_ok) and _looks_like_attention(m)])
    elif callable(modules):
        chosen = [n for n, m in named.items() if _chosen(modules, n, m)]
    elif isinstance(modules, str) or (
        isinstance(modules, Sequence) and all(isinstance(p, str) for p in modules)
    ):
        chosen = _match_patterns(list(named), [modules] if isinstance(modules, str) else list(modules))
    else:
        raise TypeError(
            "`modules` must be None, a name or glob pattern, a list of them, or a callable "
            f"(name, module) -> bool; got {type(modules).__name__}"
        )
    return [_site(name, named[name], named) for name in chosen]


def _chosen(predicate: Callable[[str, nn.Module], bool], name: str, module: nn.Module) -> bool:
    """The user's predicate on one module; what it raises is re-raised saying which argument raised."""
    try:
        return bool(predicate(name, module))
    except Exception as err:
        raise RuntimeError(
            f"`modules`: the predicate raised {type(err).__name__} ({err}) on module {name!r} "
            f"({type(module).__name__}); its own traceback is above"
        ) from err


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``model.named_modules()`` with ``torch.compile`` wrappers looked through: a compiled submodule
    keeps the names of the uncompiled model (``model.h.0.attn``, not ``model._orig_mod.h.0.attn``)."""
    named: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        clean = ".".join(part for part in name.split(".") if part != "_orig_mod")
        named[clean] = module  # the wrapper comes first and is replaced by the module it runs
    return named


def _looks_like_attention(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention) or is_special(module):
        return True
    return bool(_ATTENTION_CLASS.search(type(module).__name__))


def _innermost(names: list[str]) -> list[str]:
    """Drop names that have another chosen name below them (``BertAttention`` ⊃ ``BertSelfAttention``)."""
    return [n for n in names if not any(o != n and (not n or o.startswith(n + ".")) for o in names)]


def _match_patterns(names: list[str], patterns: list[str]) -> list[str]:
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern) if n]
        if not hits:
            close = difflib.get_close_matches(pattern, [n for n in names if n], n=5, cutoff=0.5)
            kind = "pattern" if _GLOB_CHARS & set(pattern) else "name"
            hint = f"; close matches: {close}" if close else ""
            raise ValueError(f"`modules`: no module matches the {kind} {pattern!r}{hint}")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _site(name: str, module: nn.Module, named: dict[str, nn.Module]) -> AttentionSite:
    tap: Tap = "function"
    parent = (named.get(name.rpartition(".")[0]) if "." in name else named.get("")) if name else None
    if isinstance(module, nn.MultiheadAttention):
        owned = isinstance(parent, nn.TransformerEncoderLayer) and parent.self_attn is module
        tap = "encoder_layer" if owned else "mha"
    return AttentionSite(
        name=name,
        module_type=type(module).__name__,
        tap=tap,
        num_heads=_num_heads(module),
        fused=_fused(module),
        layout=find_reader(classify(module, parent), name, module, named),
        axes=axes_of(name),
    )


def _num_heads(module: nn.Module) -> int | None:
    for attr in ("num_heads", "n_head", "num_attention_heads", "n_heads", "heads"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    config = getattr(module, "config", None)
    value = getattr(config, "num_attention_heads", None)
    return value if isinstance(value, int) else None


def _fused(module: nn.Module) -> bool | None:
    for attr in ("fused_attn", "flash"):
        value = getattr(module, attr, None)
        if isinstance(value, bool):
            return value
    impl = getattr(getattr(module, "config", None), "_attn_implementation", None)
    return None if impl is None else impl != "eager"
