"""Attention health's cost: the drawing process's CPU per capture for the max logit and the fidelity
check, and the opt-in relevance pass on the training thread.

    python benchmarks/bench_health.py
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from models import GPT, GPTConfig
from timing import cpu_seconds

from lightning_attnviz import capture_attention
from lightning_attnviz.capture.discover import find_attention
from lightning_attnviz.capture.inputs import Pending, compute
from lightning_attnviz.capture.pooling import Storage
from lightning_attnviz.capture.relevance import relevance_pass
from lightning_attnviz.capture.weights import sdpa_weights


def compute_costs(model: GPT, length: int) -> tuple[float, float, float]:
    """(maps + stats, + max logit, + fidelity and value norms) CPU seconds for one capture."""
    x = torch.randint(0, 512, (4, length))
    with torch.no_grad(), capture_attention(model, samples=2, defer=True) as cap:
        model(x)
    full: list[Pending] = list(cap.pending)
    bare = [dataclasses.replace(p, inputs=dataclasses.replace(p.inputs, v=None, out=None)) for p in full]
    plain = cpu_seconds(
        lambda: [
            sdpa_weights(p.inputs.q, p.inputs.k, None, True, None, False, 2, Storage(512, True)) for p in bare
        ]
    )
    logit = cpu_seconds(lambda: [compute(p, 512, True) for p in bare])
    fidelity = cpu_seconds(lambda: [compute(p, 512, True) for p in full])
    return plain, logit, fidelity


def main() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=512, n_layer=12, n_head=12, n_embd=768)).eval()
    torch.set_num_threads(1)  # as the drawing process runs
    for length in (128, 512):
        plain, logit, fidelity = compute_costs(model, length)
        print(
            f"L={length}: maps {plain:.3f}s, + max logit {logit:.3f}s, + fidelity/value norms {fidelity:.3f}s"
        )
    torch.set_num_threads(4)
    x = torch.randint(0, 512, (2, 128))
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    forward = time.perf_counter() - start
    times = []
    for _ in range(3):
        start = time.perf_counter()
        relevance_pass(model, x, lambda m, i: m(i), find_attention(model))
        times.append(time.perf_counter() - start)
    print(f"relevance pass, 2 × 128 tokens, 4 threads: {min(times):.3f}s (no-grad forward {forward:.3f}s)")


if __name__ == "__main__":
    main()
