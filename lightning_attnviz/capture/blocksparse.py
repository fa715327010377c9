"""BigBird's block-sparse attention, made dense: every weight the kernel applied.

Hugging Face's ``BigBirdBlockSparseAttention`` cuts the sequence into blocks and, per query block, runs
one softmax over a concatenation of key blocks: the first and last query blocks over every key (global);
the others over the first and last key blocks (global), a band of three (sliding; two plus the first
for the second and second-last blocks), and ``r`` random blocks (``rand_attn``, drawn per head; in eval
mode they are all block 0). A key block can appear twice in one softmax (a random block equal to a
global one): the kernel then weighs that key twice. Hugging Face's own dense reconstruction
(``output_attentions``) writes such a key once, so it misses weight on those rows.

Capture reads the random blocks the kernel used (from the instance's ``torch_gather_b2``), recomputes
the scores from the module's projections on the sampled rows, and writes one dense ``(heads, L, L)``
map per sample in which each key's weight is the sum over every entry of the softmax that refers to it
(:func:`block_counts`); rows sum to 1 over the visible keys, padded queries weigh nothing, padded keys
and keys in no block are hidden. The map times the values reproduces the layer's output: the fidelity
check. The model's own padding to a multiple of the block is trimmed off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_attnviz.capture.pooling import Computed, Storage
from lightning_attnviz.capture.probe import Health, Probe, fidelity_tolerance
from lightning_attnviz.capture.weights import rows_softmax


@dataclass(frozen=True)
class BlockSparseInputs:
    """What a tap keeps of one BigBird block-sparse call, sampled rows only.

    Shape:
        q, k, v: ``(s, H, L, hd)``; rand: ``(s, H, L / block − 2, r)`` long, the random key blocks of
        query blocks ``1 … L / block − 2`` as the kernel gathered them; key_padded, query_padded:
        ``(s, L)`` bool; output: ``(s, L, H·hd)``, the layer's own.
    """

    q: Tensor
    k: Tensor
    rand: Tensor
    block: int
    key_padded: Tensor
    query_padded: Tensor
    length: int  # tokens kept (the model's padding trimmed off)
    v: Tensor | None = None
    output: Tensor | None = None


def block_counts(blocks: int, rand: Tensor) -> Tensor:
    """How many times the kernel's softmax of query block ``i`` meets key block ``j``.

    Shape:
        rand: ``(s, H, blocks − 2, r)``; returns ``(s, H, blocks, blocks)`` float.
    """
    samples, heads = rand.shape[:2]
    counts = torch.zeros(samples, heads, blocks, blocks)
    counts[:, :, [0, -1]] = 1.0  # the global query blocks read every key block once
    last = blocks - 1
    for i in range(1, last):
        if i == 1:
            fixed = [0, 1, 2, last]  # the band starts at the first (global) block
        elif i == last - 1:
            fixed = [0, last - 2, last - 1, last]
        else:
            fixed = [0, i - 1, i, i + 1, last]
        counts[:, :, i, fixed] += 1.0
        picked = rand[:, :, i - 1].long()
        counts[:, :, i].scatter_add_(-1, picked, torch.ones(picked.shape))
    return counts


def block_sparse_weights(
    x: BlockSparseInputs, storage: Storage, dropout_p: float = 0.0
) -> tuple[Computed, Health]:
    """The dense map of one block-sparse call and its health (max logit; fidelity to the layer's output)."""
    samples, heads, full, dim = x.q.shape
    sink_keys = storage.sink_keys
    n = x.length
    q, k = x.q[..., :n, :].float(), x.k[..., :n, :].float()
    counts = block_counts(full // x.block, x.rand)
    hidden_keys, hidden_rows = x.key_padded[:, None, None, :n], x.query_padded[:, None, :n, None]

    def counts_of(start: int, stop: int) -> Tensor:
        per_block = counts[:, :, torch.arange(start, stop) // x.block]  # (s, H, rows, blocks)
        return per_block.repeat_interleave(x.block, dim=-1)[..., :n]

    def scores_of(start: int, stop: int) -> Tensor:
        hidden = (counts_of(start, stop) == 0) | hidden_keys | hidden_rows[:, :, start:stop]
        scores = (q[..., start:stop, :] @ k.mT) * dim**-0.5
        return scores.masked_fill(hidden, float("-inf"))  # (s, H, rows, n)

    probe = Probe(sink_keys=sink_keys)
    if x.v is not None and x.output is not None and dropout_p == 0:
        expected = x.output[:, :n].reshape(samples, n, heads, -1).transpose(1, 2)  # (s, H, n, hd)
        tolerance = fidelity_tolerance(x.output.dtype)
        probe = Probe(x.v[..., :n, :].float(), expected, sink_keys=sink_keys, tolerance=tolerance)
    shape = (samples, heads, n, n)
    result = rows_softmax(scores_of, shape, storage, probe, counts_of=counts_of)
    return result, probe.result()


