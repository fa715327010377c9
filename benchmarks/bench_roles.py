"""Head roles' cost: their share of the drawing process's CPU per capture.

A whole capture (``Pipeline.run``: maps, statistics, health, the default pictures, the tab's maps, the
``.npz``) with the defaults, against the part that is the role scores' (scoring every layer, their
scalars, and their four layer × head pictures, encoded), on the same capture, in one thread as the
drawing process runs it. Nothing of it runs on the training thread: that only passes the fixed samples'
token ids, taken once per fit.

    python benchmarks/bench_roles.py
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from models import GPT, GPTConfig
from timing import cpu_seconds

from lightning_attnviz import AttentionMonitor, capture_attention
from lightning_attnviz.analysis.views import LayerStats, layer_stats
from lightning_attnviz.capture.inputs import compute
from lightning_attnviz.pipeline.messages import Job, Setup
from lightning_attnviz.pipeline.roles import role_scalars, score_roles
from lightning_attnviz.pipeline.run import Pipeline
from lightning_attnviz.render.maps import encode_png
from lightning_attnviz.render.plots import default_plots
from lightning_attnviz.render.stats import render_stats
from lightning_attnviz.sinks.tags import Tags


def capture(model: GPT, length: int, step: int) -> Job:
    g = torch.Generator().manual_seed(step)
    x = torch.randint(0, 512, (4, length), generator=g)
    x[:, length // 2 :] = x[:, : length - length // 2]  # a repeated half, as induction needs
    with torch.no_grad(), capture_attention(model, samples=2, defer=True, max_tokens=512, stats=True) as cap:
        model(x)
    ids = tuple(row.numpy() for row in x[:2])
    labels = tuple(tuple(f"t{i}" for i in row.tolist()) for row in x[:2])
    return Job(step, 0, tuple(cap.pending), labels, (), True, token_ids=ids)


def costs(model: GPT, length: int, log_dir: str) -> tuple[float, float, float]:
    """(whole capture, role scores + scalars, role pictures) CPU seconds."""
    config = AttentionMonitor().config
    setup = Setup(config, default_plots(None, False), None, Tags(), log_dir)
    first, job = capture(model, length, 1), capture(model, length, 2)
    pipeline = Pipeline(setup)
    pipeline.run(first)  # the history holds one capture, as from the second capture of a fit on

    def whole() -> None:
        p = Pipeline(setup)
        p.load_state_dict(pipeline.state_dict())
        p.run(job)

    records = [compute(p, config.store_tokens, True) for p in job.pending]
    stats = [layer_stats(r) for r in records]
    scores = score_roles(records, job)

    def scoring() -> None:
        role_scalars({}, setup.tags, score_roles(records, job), config.head_stats)

    scored = [replace(s, **scores[s.layer]) for s in stats]

    def pictures() -> None:
        for p in render_stats(scored, None, job.step, None, which=LayerStats.ROLES):
            encode_png(p.image)

    return cpu_seconds(whole), cpu_seconds(scoring), cpu_seconds(pictures)


def main() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=512, n_layer=12, n_head=12, n_embd=768)).eval()
    torch.set_num_threads(1)  # as the drawing process runs
    print("| length | whole capture (CPU s) | role scores + scalars | role pictures | roles' share |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for length in (128, 512):
            whole, scoring, pictures = costs(model, length, tmp)
            share = (scoring + pictures) / whole
            ms = f"{scoring * 1e3:.0f} ms | {pictures * 1e3:.0f} ms"
            print(f"| {length} | {whole:.2f} | {ms} | {share:.1%} |", flush=True)


if __name__ == "__main__":
    main()
