"""What an attention module's weights *mean*, decided before capture: the layouts that are not one
``(B, H, L, S)`` softmax over a plain token axis of the fixed samples.

A picture that means something other than it says is worse than none, so each site gets a
:class:`Layout`: token attention (drawn), attention pooling (drawn; the latent's row is what the head
reads), talking-heads attention (drawn, with a note that says what was kept), or a layout capture
declares unsupported (windowed, banded, block-sparse, channel attention): no tap is installed, the
capture warns once naming the module and what is not shown, and the module table carries the note.

Axes: decoder self-attention is target × target, cross-attention target (queries) × source (keys);
everything else is source × source (:func:`axes_of`). A layout capture cannot know from names is caught
at run time instead (:func:`folded_batch`): an attention whose batch is a multiple of the samples'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

Kind = Literal["token", "pool", "talking_heads", "windowed", "banded", "block_sparse", "channel"]
Axis = Literal["source", "target"]

_WINDOWED = re.compile(r"window|^(donut|maskformer)?swin(v2)?.*attention$|^LocallyGroupedAttn$", re.I)
_BANDED = re.compile(r"^longformer.*selfattention$|^LED(Encoder)?SelfAttention$", re.I)
_BLOCK_SPARSE = re.compile(r"blocksparse", re.I)
_CHANNEL = re.compile(r"^XCA$|crosscovariance|channelattention", re.I)
_POOL = re.compile(r"attentionpool|poolinghead|maphead", re.I)
_TALKING = re.compile(r"talkinghead", re.I)
_CROSS = re.compile(r"encoder_attn|encdec|multihead_attn|cross", re.I)

_NOTES: dict[Kind, str] = {
    "windowed": (
        "windowed attention: it runs on a (batch·windows, N, C) batch (windows shifted or folded into "
        "heads), so its rows are windows, not the fixed samples; no map is drawn"
    ),
    "banded": (
        "banded local attention: its weights come back in band layout (B, L, H, 2w+1), not (B, H, L, S); "
        "no map is drawn"
    ),
    "block_sparse": (
        "block-sparse attention: its weights are computed in separate block fragments that are not one "
        "(B, H, L, S) map; no map is drawn"
    ),
    "channel": (
        "channel attention (cross-covariance, channels × channels): it is not attention between "
        "tokens; no token map is drawn"
    ),
    "talking_heads": (
        "talking-heads attention: the map is the softmax before the post-softmax head mix (proj_w); "
        "the weights applied to V are mixtures of these heads"
    ),
    "pool": ("attention pooling: the latent query's row over the patches is what the classifier reads"),
}
UNSUPPORTED: frozenset[Kind] = frozenset({"windowed", "banded", "block_sparse", "channel"})


@dataclass(frozen=True)
class Layout:
    """How a module's attention is laid out, and what capture shows of it.

    Attributes:
        kind: ``"token"`` for ordinary attention; see :data:`_NOTES` for the others.
        note: one sentence for the module table and warnings; ``None`` for token attention.
    """

    kind: Kind = "token"
    note: str | None = None

    @property
    def supported(self) -> bool:
        return self.kind not in UNSUPPORTED


TOKEN = Layout()  # ordinary token attention


def classify(module: nn.Module, parent: nn.Module | None = None) -> Layout:
    """The layout of ``module``'s attention, from its class (and its parent's, for pooling heads)."""
    name = type(module).__name__
    kind: Kind = "token"
    if _CHANNEL.search(name):
        kind = "channel"
    elif _BLOCK_SPARSE.search(name):
        kind = "block_sparse"
    elif _BANDED.search(name):
        kind = "banded"
    elif _WINDOWED.search(name):
        kind = "windowed"
    elif _TALKING.search(name) or (hasattr(module, "proj_l") and hasattr(module, "proj_w")):
        kind = "talking_heads"
    elif _POOL.search(name) or (parent is not None and _POOL.search(type(parent).__name__)):
        kind = "pool"
    return Layout(kind, _NOTES.get(kind))


def is_special(module: nn.Module) -> bool:
    """A module :func:`classify` recognises although its class name does not say "attention" (XCA)."""
    return bool(_CHANNEL.search(type(module).__name__))


def axes_of(name: str) -> tuple[Axis, Axis]:
    """(query axis, key axis) of a site from its qualified name: decoder self-attention is target ×
    target, cross-attention (``encoder_attn``, ``EncDecAttention``, ``multihead_attn``) target × source."""
    parts = name.split(".")
    if not any(p == "decoder" or p.startswith("decoder") for p in parts[:-1]):
        return ("source", "source")
    return ("target", "source") if _CROSS.search(parts[-1]) else ("target", "target")


def unsupported_warning(name: str, layout: Layout) -> str:
    return f"Attention in {name!r} is not captured: {layout.note}."


# -- what the model's own forward was given ---------------------------------------------------------

_DECODER_INPUTS = ("decoder_input_ids", "decoder_inputs_embeds", "labels", "tgt")


@dataclass(frozen=True)
class CallInputs:
    """What the capture reads from the call of the model it wraps.

    Attributes:
        batch: rows of the batch (``None``: unknown).
        padded: ``(batch, L)`` bool, True at padding, from an ``attention_mask`` of 0/1; ``None``: unknown.
        encoder_decoder: the call carries decoder inputs, so source and target lengths differ in meaning.
    """

    batch: int | None = None
    padded: Tensor | None = None
    encoder_decoder: bool = False


def read_call(args: tuple, kwargs: Mapping[str, Any]) -> CallInputs:
    """:class:`CallInputs` of one ``model(*args, **kwargs)`` call (a dict batch passed whole counts too)."""
    named: dict[str, Any] = dict(kwargs)
    for arg in args:
        if isinstance(arg, Mapping):
            named.update({k: v for k, v in arg.items() if isinstance(k, str)})
    sizes = [t.shape[0] for t in _tensors(args, named) if t.dim() > 0]
    batch = max(set(sizes), key=sizes.count) if sizes else None
    mask = named.get("attention_mask")
    padded = None
    if isinstance(mask, Tensor) and mask.dim() == 2 and not mask.is_floating_point():
        padded = (mask == 0).detach()
    decoder = any(isinstance(named.get(k), Tensor) for k in _DECODER_INPUTS)
    return CallInputs(batch, padded, decoder)


def _tensors(args: tuple, named: Mapping[str, Any]) -> list[Tensor]:
    found = [a for a in args if isinstance(a, Tensor)]
    found += [v for v in named.values() if isinstance(v, Tensor)]
    return found


def folded_batch(rows: int, call: CallInputs) -> bool:
    """Whether an attention batch of ``rows`` is the samples' batch folded with something else (windows,
    groups, axial lines): a whole multiple of it, larger than it."""
    return call.batch is not None and call.batch > 0 and rows > call.batch and rows % call.batch == 0


def folded_warning(name: str, rows: int, batch: int | None) -> str:
    return (
        f"Attention in {name!r} is not captured: it runs on {rows} rows for a batch of {batch} "
        "(windows, groups or axial lines folded into the batch), so its rows are not the fixed samples; "
        "no map is drawn."
    )
