"""What an attention module's weights *mean*, decided before capture: the layouts that are not one
``(B, H, L, S)`` softmax over a plain token axis of the fixed samples.

A picture that means something other than it says is worse than none, so each site gets a
:class:`Layout`: token attention (drawn), attention pooling (drawn; the latent's row is what the head
reads), talking-heads attention (drawn, with a note that says what was kept), windowed, banded and
block-sparse attention of the families capture knows how to read (:func:`find_reader`: Swin, Swin-v2,
Twins, Longformer, BigBird; put back into one dense map per sample), or a layout capture declares
unsupported (channel attention, and windows, bands or blocks of a family it cannot read): no tap is
installed, the capture warns once naming the module and what is not shown, and the module table
carries the note.

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

from lightning_attnviz.capture.samples import batch_size

Kind = Literal["token", "pool", "talking_heads", "windowed", "banded", "block_sparse", "channel"]
Axis = Literal["source", "target"]
# How capture reads a layout that is not one softmax (see find_reader); None: the kernel's own softmax.
Reader = Literal["timm_swin", "hf_swin", "twins", "longformer", "bigbird"]
WINDOW_READERS: frozenset[str] = frozenset({"timm_swin", "hf_swin", "twins"})

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
# what a map of a layout capture reads shows, for the module table
_PLACED: dict[Kind, str] = {
    "windowed": (
        "windowed attention placed back on the stage's token grid (row-major): the cyclic shift undone, "
        "keys outside the query's window hidden (weight 0), the model's window padding removed (weight "
        "it took is not shown)"
    ),
    "banded": (
        "sliding-window attention made dense: the band, every token's attention to the global tokens, "
        "and the global tokens' own rows (their own projections); keys outside the band and not global "
        "hidden"
    ),
    "block_sparse": (
        "block-sparse attention made dense: every weight the kernel applied (sliding, global and random "
        "blocks, a key met twice counted twice); keys in no block hidden"
    ),
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
    reader: Reader | None = None  # how capture reads a layout that is not one softmax
    host: str | None = None  # the module whose call says where the windows lie (window readers)

    @property
    def supported(self) -> bool:
        """A tap is installed: the kernel's own softmax, or a layout capture knows how to read."""
        return self.kind not in UNSUPPORTED or self.reader is not None

    @property
    def dense(self) -> bool:
        """The kernel computes one ``(B, H, L, S)`` softmax over the sample's tokens itself."""
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


def find_reader(layout: Layout, name: str, module: nn.Module, named: Mapping[str, nn.Module]) -> Layout:
    """``layout`` with the reader capture uses for it, when ``module``'s structure is one it knows.

    Read from attributes only (never the class name alone): a timm Swin block (``_attn``, or Swin-v2-CR's
    ``_shifted_window_attn``, with ``window_size`` and ``shift_size``; roll, then pad), a Hugging Face
    Swin layer (``maybe_pad``, ``window_size``, ``shift_size``; pad, then roll), timm Twins' locally
    grouped attention (``ws``), Longformer's self-attention (``query_global``,
    ``one_sided_attn_window_size``) and BigBird's block-sparse attention
    (``bigbird_block_sparse_attention``, ``torch_gather_b2``). Anything else keeps its layout (and,
    unsupported, stays declared so).
    """
    kind = layout.kind
    reader: Reader | None = None
    host: str | None = None
    if kind == "windowed":
        if isinstance(getattr(module, "ws", None), int) and hasattr(module, "qkv"):
            reader, host = "twins", name
        else:
            parts = name.split(".")
            for up in (1, 2):  # the block (timm, HF Swin) or the layer above HF Swin-v2's inner module
                host_name = ".".join(parts[:-up])
                block = named.get(host_name) if len(parts) > up else None
                if block is None or not (hasattr(block, "window_size") and hasattr(block, "shift_size")):
                    continue
                timm = any(callable(getattr(block, m, None)) for m in ("_attn", "_shifted_window_attn"))
                if timm and getattr(block, "attn", None) is module:
                    reader, host = "timm_swin", host_name
                elif callable(getattr(block, "maybe_pad", None)):
                    reader, host = "hf_swin", host_name
                break
    elif kind == "banded" and hasattr(module, "query_global"):
        reader = "longformer" if hasattr(module, "one_sided_attn_window_size") else None
    elif kind == "block_sparse" and callable(getattr(module, "bigbird_block_sparse_attention", None)):
        reader = "bigbird" if callable(getattr(module, "torch_gather_b2", None)) else None
    if reader is None:
        return layout
    return Layout(kind, _PLACED[kind], reader, host)


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
        length: tokens per sample of ``input_ids`` (or ``inputs_embeds``, or the first 2-D integer
            tensor): what a model that pads to a multiple of its window or block (Longformer, BigBird)
            was given, so its padding can be trimmed off; ``None``: unknown.
    """

    batch: int | None = None
    padded: Tensor | None = None
    encoder_decoder: bool = False
    length: int | None = None


def read_call(args: tuple, kwargs: Mapping[str, Any]) -> CallInputs:
    """:class:`CallInputs` of one ``model(*args, **kwargs)`` call (a dict batch passed whole counts too)."""
    named: dict[str, Any] = dict(kwargs)
    for arg in args:
        if isinstance(arg, Mapping):
            named.update({k: v for k, v in arg.items() if isinstance(k, str)})
    batch = batch_size([t.shape[0] for t in _tensors(args, named) if t.dim() > 0])
    mask = named.get("attention_mask")
    padded = None
    if isinstance(mask, Tensor) and mask.dim() == 2 and not mask.is_floating_point():
        padded = (mask == 0).detach()
    decoder = any(isinstance(named.get(k), Tensor) for k in _DECODER_INPUTS)
    ids = [named.get(k) for k in ("input_ids", "inputs_embeds")]
    ids += [t for t in _tensors(args, named) if t.dim() == 2 and not t.is_floating_point()]
    length = next((t.shape[1] for t in ids if isinstance(t, Tensor) and t.dim() >= 2), None)
    return CallInputs(batch, padded, decoder, length)


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
