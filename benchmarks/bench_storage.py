"""What storing whole maps costs per capture: the capture file's and the Attention tab's megabytes, and
the drawing process's CPU seconds for the storing steps (one thread, as it runs), for a ViT-B/16 at
224 px (197 tokens) and 512-token text (12 layers × 12 heads each), two fixed samples.

    python benchmarks/bench_storage.py

Random-init models: trained attention is peakier and compresses a little differently.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: F401  (timm without torchvision: the tests' stand-in)
from models import GPT, GPTConfig

from lightning_attnviz import capture_attention
from lightning_attnviz.analysis.history import HISTORY_TOKENS
from lightning_attnviz.analysis.views import make_views, pool_view
from lightning_attnviz.capture.grid import find_grid
from lightning_attnviz.capture.inputs import compute
from lightning_attnviz.sinks.capture_file import save_capture
from lightning_attnviz.tab.record import encode_map


def measure(name: str, model: torch.nn.Module, inputs: torch.Tensor, images: list[np.ndarray]) -> None:
    grid = find_grid(model)
    keep = grid.prefix_tokens if grid is not None else 1
    with torch.no_grad(), capture_attention(model, samples=2, defer=True) as cap:
        model(inputs)
    records = [compute(p, 512, True, keep, grid) for p in cap.pending]
    start = time.process_time()
    stored = make_views(records, [None, None], None, grid=grid, keep=keep)
    drawn = [pool_view(v, 128, grid, keep) for v in stored]
    [pool_view(v, HISTORY_TOKENS, grid, keep) for v in drawn]
    tab = 0
    for v in stored:
        on_grid = grid is not None and v.weights.shape[-1] == grid.length
        image = images[v.sample] if on_grid else None
        blob = encode_map(layer=v.layer, sample=v.sample, step=0, weights=v.weights, visible=v.visible,
                          q_labels=v.q_labels, k_labels=v.k_labels, note=v.note, image=image,
                          grid=grid.grid if on_grid else None)  # fmt: skip
        tab += len(blob)
    with tempfile.TemporaryDirectory() as directory:
        path = save_capture(Path(directory) / "step.npz", stored, 0, 0, grid, images)
        size = path.stat().st_size
    seconds = time.process_time() - start
    raw = sum(v.weights.size * 2 for v in stored)
    print(
        f"{name}: capture file {size / 1e6:.1f} MB ({raw / 1e6:.1f} MB of float16 maps uncompressed), "
        f"Attention tab {tab / 1e6:.1f} MB, storing {seconds:.1f} CPU s per capture"
    )


def main() -> None:
    import timm

    torch.manual_seed(0)
    torch.set_num_threads(1)  # as the drawing process runs
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    images = [np.random.default_rng(s).random((224, 224, 3)) for s in range(2)]
    measure("ViT-B/16, 197 tokens", vit, torch.randn(2, 3, 224, 224), images)
    gpt = GPT(GPTConfig(vocab_size=64, block_size=512, n_layer=12, n_head=12, n_embd=192)).eval()
    measure("text, 512 tokens, causal", gpt, torch.randint(0, 64, (2, 512)), [])


if __name__ == "__main__":
    main()
