"""Longformer's sliding-window attention with global tokens, made dense.

Hugging Face's ``LongformerSelfAttention`` (and LED's encoder copy of it) scores each token against a
band of ``±w`` keys, returned in band layout ``(B, L, H, 2w + 1)``, and against the global tokens (which
are removed from the band), with one softmax over both; the global tokens' own rows are computed apart,
with their own projections (``query_global``, ``key_global``, ``value_global``), over every key.

Capture recomputes the same scores from the module's projections on the sampled rows and writes one
dense ``(heads, L, L)`` map per sample: for an ordinary query its band and the global keys (each key
once; a key met twice would be summed), for a global query its own row; padded queries weigh nothing,
padded keys and keys outside the band that are not global are hidden. The model's own padding to a
multiple of the window is trimmed off. The map times the values (``value`` for ordinary rows,
``value_global`` for global rows) reproduces the layer's output: the fidelity check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_attnviz.capture.pooling import Computed, Storage
from lightning_attnviz.capture.probe import Health, Probe, fidelity_tolerance
from lightning_attnviz.capture.weights import rows_softmax


@dataclass(frozen=True)
class BandInputs:
    """What a tap keeps of one Longformer call, sampled rows only.

    Shape:
        q, k, q_global, k_global, v, v_global: ``(s, H, L, hd)`` (queries scaled by ``1/√hd`` as the
        model does); masked, is_global: ``(s, L)`` bool; output: ``(s, L, H·hd)``, the layer's own.
    """

    q: Tensor
    k: Tensor
    q_global: Tensor
    k_global: Tensor
    masked: Tensor
    is_global: Tensor
    window: int  # keys on each side of a query in the band
    length: int  # tokens kept (the model's padding trimmed off)
    v: Tensor | None = None
    v_global: Tensor | None = None
    output: Tensor | None = None


def band_weights(
    x: BandInputs, storage: Storage, dropout_p: float = 0.0
) -> tuple[Computed, Health]:
    """The dense map of one Longformer call and its health (max logit; fidelity to the layer's output)."""
    samples, heads = x.q.shape[:2]
    sink_keys = storage.sink_keys
    n = x.length
    q, k, qg, kg = (t[..., :n, :].float() for t in (x.q, x.k, x.q_global, x.k_global))
    masked, is_global = x.masked[:, :n], x.is_global[:, :n]
    keys = torch.arange(n)

    def scores_of(start: int, stop: int) -> Tensor:
        band = (torch.arange(start, stop)[:, None] - keys[None, :]).abs() <= x.window  # (rows, n)
        ordinary = (band[None] & ~is_global[:, None, :]) | is_global[:, None, :]  # (s, rows, n)
        own = is_global[:, start:stop, None]  # global queries read every key, with their own projections
        allowed = torch.where(own, True, ordinary) & ~masked[:, None, :] & ~masked[:, start:stop, None]
        scores = torch.where(own[:, None], qg[..., start:stop, :] @ kg.mT, q[..., start:stop, :] @ k.mT)
        return scores.masked_fill(~allowed[:, None], float("-inf"))  # (s, H, rows, n)

    probe, product_of = Probe(sink_keys=sink_keys), None
    if x.v is not None and x.v_global is not None and x.output is not None and dropout_p == 0:
        v, vg = x.v[..., :n, :].float(), x.v_global[..., :n, :].float()
        expected = x.output[:, :n].reshape(samples, n, heads, -1).transpose(1, 2)  # (s, H, n, hd)
        probe = Probe(expected=expected, sink_keys=sink_keys, tolerance=fidelity_tolerance(x.output.dtype))

        def product_of(start: int, weights: Tensor) -> Tensor:
            own = is_global[:, None, start : start + weights.shape[-2], None]
            return torch.where(own, weights @ vg, weights @ v)

    result = rows_softmax(scores_of, (samples, heads, n, n), storage, probe, product_of)
    return result, probe.result()


def trimmed(length: int | None, masked: Tensor) -> int:
    """Tokens to keep of a sequence the model padded itself: the call's ``length`` when every position
    after it is padding (masked), else all of them.

    Shape:
        masked: ``(s, L)`` bool, True at padding.
    """
    full = masked.shape[-1]
    if length is None or not 0 < length < full or not bool(masked[:, length:].all()):
        return full
    return length


