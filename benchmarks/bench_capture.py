"""Forward time and peak memory of capture vs a plain forward vs eager attention returning all weights.

GPT-style model (nanoGPT layout, fused SDPA). Each variant runs in its own process so that peak RSS is
its own; times are medians over repeats; ratios are against the plain forward measured in the same run.

    python benchmarks/bench_capture.py [--seq 1024] [--batch 8] [--layers 6] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = {
    "plain": "fused SDPA, no capture",
    "capture": "fused SDPA + capture_attention(samples=2)",
    "capture_pooled": "fused SDPA + capture_attention(samples=2, max_tokens=512, stats=True)",
    "fused_off": "fusion turned off (timm's `fused_attn=False` way), weights not kept",
    "eager_all": "eager softmax, all B·H·L² weights kept (HF output_attentions style)",
}


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, eager: bool, keep: bool = True) -> None:
        super().__init__()
        self.qkv, self.proj, self.heads, self.eager = nn.Linear(d, 3 * d), nn.Linear(d, d), heads, eager
        self.keep = keep
        self.kept: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        if self.eager:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(-1)
            if self.keep:
                self.kept.append(att)  # what output_attentions returns
            y = att @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, eager: bool, keep: bool = True) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, eager, keep)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def run_variant(name: str, seq: int, batch: int, layers: int, repeats: int) -> dict:
    from lightning_attnviz import capture_attention

    torch.manual_seed(0)
    d, heads = 256, 8
    eager = name in ("eager_all", "fused_off")
    model = nn.Sequential(*[Block(d, heads, eager, keep=name == "eager_all") for _ in range(layers)]).eval()
    x = torch.randn(batch, seq, d)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            if name.startswith("capture"):
                pooled = dict(max_tokens=512, stats=True) if name == "capture_pooled" else {}
                with capture_attention(model, samples=2, **pooled) as cap:
                    model(x)
                kept = sum(w.numel() * 4 for w in cap.maps.values())
                del cap  # release this capture's maps before the next one is timed
            else:
                model(x)
                kept = sum(a.numel() * 4 for m in model.modules() if isinstance(m, Attention) for a in m.kept)
                for m in model.modules():
                    if isinstance(m, Attention):
                        m.kept.clear()
            if i:  # the first run warms up
                times.append(time.perf_counter() - start)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"time_s": statistics.median(times), "peak_extra_mb": peak_mb, "kept_mb": kept / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.seq, args.batch, args.layers, args.repeats)))
        return

    results = {}
    for name in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            name,
            "--seq",
            str(args.seq),
            "--batch",
            str(args.batch),
            "--layers",
            str(args.layers),
            "--repeats",
            str(args.repeats),
        ]
        results[name] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    base = results["plain"]["time_s"]
    print(
        f"GPT-style model: {args.layers} layers, 8 heads, d=256, L={args.seq}, B={args.batch}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| variant | forward (s) | vs plain | peak extra RSS (MB) | weights kept (MB) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {VARIANTS[name]} | {r['time_s']:.3f} | {r['time_s'] / base:.2f}x | "
            f"{r['peak_extra_mb']:.0f} | {r['kept_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
