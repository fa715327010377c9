"""torch.compile and mixed precision: captures still happen, stay exact, and don't recompile each time."""

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_no_taps, reference_sdpa_weights
from lightning_models import VOCAB, LitGPT, make_trainer, read_events, token_loader
from models import GPT, GPTConfig, gpt_reference_weights
from pytorch_lightning.callbacks import Callback
from torch._dynamo.utils import counters

from lightning_attnviz import AttentionMonitor, capture_attention, find_attention
from lightning_attnviz.sinks.capture_file import load_capture
from lightning_attnviz.sinks.tags import Tags

CAPTURE_DIR = Tags().captures_dir

# Dynamo and AOTAutograd without Inductor's C++ builds: a fit compiled with Inductor takes ~30 s on a
# 2-core machine. Graph counts come from Dynamo, so they are the same for every backend.
FIT_BACKEND = "aot_eager"
LAYERS = ["model.h.0.attn", "model.h.1.attn"]
FLOAT16_STORAGE = 5e-4  # saved captures are float16: half an ulp below 1.0 is 2**-12 ≈ 2.4e-4


@pytest.fixture
def dynamo():
    """A clean Dynamo cache and counters before the test, and nothing compiled left behind after it."""
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


class GraphCounter(Callback):
    """Put after AttentionMonitor in ``callbacks``: Dynamo's graph count right after each capture."""

    def __init__(self) -> None:
        self.after_capture: list[int] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.after_capture.append(counters["stats"]["unique_graphs"])


class LitCompiledGPT(LitGPT):
    """The user compiles the inner model: ``self.model = torch.compile(GPT(...))``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.compile(GPT(GPTConfig()), backend=FIT_BACKEND)


class LitGPTNoLog(LitGPT):
    """LitGPT without ``self.log`` in its steps. Lightning's own compile path compiles ``training_step``,
    and there ``self.log`` fails inside Dynamo with Lightning 2.6.6 and torch 2.13 ("InternalTorchDynamoError:
    AttributeError: 'method' object has no attribute '__dict__'", from ``inspect.getfullargspec`` of the
    compiled ``training_step``), with or without AttentionMonitor."""

    def step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.drop(self(x)).flatten(0, 1), y.flatten())


def _fixed_samples() -> torch.Tensor:
    """What AttentionMonitor keeps: the first 2 rows of the first validation batch."""
    return next(iter(token_loader(seed=1)))[0][:2]


def _assert_captured_every_validation(trainer: pl.Trainer, layers: list[str], steps: list[int]) -> None:
    events = read_events(trainer.logger.log_dir)
    expected = {f"attention/sample_{s}/{layer}/heatmap" for s in range(2) for layer in layers}
    assert set(events.Tags()["images"]) == expected
    for tag in expected:
        assert [e.step for e in events.Images(tag)] == steps, tag


def _assert_saved_capture_matches(trainer: pl.Trainer, expected: dict[str, torch.Tensor], tol: float) -> None:
    """The maps the callback drew at its last capture (saved as float16) against ``expected`` [2, H, L, L]."""
    last = sorted((Path(trainer.logger.log_dir) / CAPTURE_DIR).iterdir())[-1]
    saved = load_capture(last)
    views, step = saved.views, saved.step
    assert step == trainer.global_step - 1  # where Lightning logs the last validation's metrics
    assert sorted({v.layer for v in views}) == sorted(expected)
    for view in views:
        assert_close(
            torch.from_numpy(view.weights.astype(np.float32)), expected[view.layer][view.sample], tol
        )


def _references(gpt: GPT, idx: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}h.{i}.attn": w for i, w in enumerate(gpt_reference_weights(gpt, idx))}


# -- torch.compile ------------------------------------------------------------------------------------


def test_inner_model_compiled_is_captured_without_recompiling_each_time(tmp_path, dynamo):
    lit = LitCompiledGPT()
    graphs = GraphCounter()
    monitor = AttentionMonitor(plots=["heatmap"])
    trainer = make_trainer(
        tmp_path, [monitor, graphs], max_epochs=4, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(lit, token_loader(), token_loader(seed=1))

    layers = [site.name for site in find_attention(lit)]
    assert layers == ["model.h.0.attn", "model.h.1.attn"]  # the names of the uncompiled model
    _assert_captured_every_validation(trainer, layers, [1, 3, 5, 7])
    assert len(graphs.after_capture) == 4
    assert graphs.after_capture[1] == graphs.after_capture[3]  # later captures reuse the compiled graphs

    gpt = lit.model._orig_mod
    idx = _fixed_samples()
    lit.eval()
    with torch.no_grad():
        reference = _references(gpt, idx, "")
        _assert_saved_capture_matches(
            trainer, dict(zip(layers, reference.values(), strict=True)), FLOAT16_STORAGE
        )
        plain = lit.model(idx)
        with capture_attention(lit.model) as cap:  # the OptimizedModule itself: names of the user's model
            out = lit.model(idx)
    assert torch.equal(out, plain)
    assert list(cap.maps) == ["h.0.attn", "h.1.attn"]
    for key, weights in cap.maps.items():
        assert_close(weights, reference[key])
    assert_no_taps(gpt)


def test_inner_model_compiled_keeps_the_uncompiled_names(tmp_path, dynamo):
    lit = LitCompiledGPT()
    trainer = make_trainer(
        tmp_path, [AttentionMonitor(modules="model.h.*.attn", plots=["heatmap"])], max_epochs=1
    )
    trainer.fit(lit, token_loader(), token_loader(seed=1))
    _assert_captured_every_validation(trainer, LAYERS, [2])


def test_lightning_compiled_module_is_captured_without_recompiling_each_time(tmp_path, dynamo):
    """``trainer.fit(torch.compile(lit))``: Lightning 2.6 unwraps the OptimizedModule (``from_compiled``)
    and compiles ``forward`` and the ``*_step`` methods of the LightningModule in place."""
    lit = LitGPTNoLog()
    graphs = GraphCounter()
    trainer = make_trainer(
        tmp_path,
        [AttentionMonitor(plots=["heatmap"]), graphs],
        max_epochs=4,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    trainer.fit(torch.compile(lit, backend=FIT_BACKEND), token_loader(), token_loader(seed=1))
    assert lit._compiler_ctx is not None  # it really ran compiled
    assert dynamo["stats"]["unique_graphs"] >= 3  # train, validation, capture

    _assert_captured_every_validation(trainer, LAYERS, [1, 3, 5, 7])  # the uncompiled names
    assert len(graphs.after_capture) == 4
    assert graphs.after_capture[1] == graphs.after_capture[3]

    idx = _fixed_samples()
    lit.eval()
    with torch.no_grad():
        reference = _references(lit.model, idx, "model.")
        _assert_saved_capture_matches(trainer, reference, FLOAT16_STORAGE)
        plain = lit(idx)  # the compiled forward
        with capture_attention(lit) as cap:
            out = lit(idx)
    assert torch.equal(out, plain)
    assert list(cap.maps) == LAYERS
    for key, weights in cap.maps.items():
        assert_close(weights, reference[key])
    assert_no_taps(lit.model)


def test_inductor_recompiles_once_when_capture_turns_on(dynamo, record_property):
    """Default backend (Inductor), as a user runs it: one new graph for the first capture, none after;
    the plain compiled forward keeps its own graph. The one-time cost is recorded as a property."""
    gpt = GPT(GPTConfig(n_layer=3)).eval()
    compiled = torch.compile(gpt)
    idx = torch.randint(0, 32, (2, 10))
    references = gpt_reference_weights(gpt, idx)
    seconds, graphs = [], []
    with torch.no_grad():
        plain = compiled(idx)
        before = dynamo["stats"]["unique_graphs"]
        for _ in range(4):
            start = time.perf_counter()
            with capture_attention(compiled) as cap:
                out = compiled(idx)
            seconds.append(time.perf_counter() - start)
            graphs.append(dynamo["stats"]["unique_graphs"])
            assert torch.equal(out, plain)
            assert torch.equal(compiled(idx), plain)  # capture off again
            for weights, reference in zip(cap.maps.values(), references, strict=True):
                assert_close(weights, reference)
    assert graphs == [before + 1] * 4
    assert dynamo["stats"]["unique_graphs"] == before + 1
    record_property("capture_recompile_s", round(seconds[0] - statistics.median(seconds[1:]), 3))
    record_property("capture_steady_s", round(statistics.median(seconds[1:]), 4))
    assert_no_taps(gpt)


# -- mixed precision ----------------------------------------------------------------------------------


def _fit_mixed(tmp_path, callbacks, precision: str = "bf16-mixed") -> tuple[LitGPT, pl.Trainer]:
    pl.seed_everything(7, verbose=False)
    lit = LitGPT()
    trainer = make_trainer(
        tmp_path, callbacks, precision=precision, max_epochs=2, limit_train_batches=2, limit_val_batches=1
    )
    trainer.fit(lit, token_loader(), token_loader(seed=1))
    return lit, trainer


def _autocast_references(lit: LitGPT, idx: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each layer's attention from the low-precision q and k that SDPA received under CPU autocast."""
    seen: list[torch.Tensor] = []
    handles = [b.attn.c_attn.register_forward_hook(lambda m, a, o: seen.append(o)) for b in lit.model.h]
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            lit(idx)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for i, qkv in enumerate(seen):
        assert qkv.dtype == dtype
        B, T, C = qkv.shape
        q, k, _ = qkv.split(C // 3, dim=2)
        q, k = (t.view(B, T, lit.model.config.n_head, -1).transpose(1, 2) for t in (q, k))  # (B, nh, T, hs)
        out[f"model.h.{i}.attn"] = reference_sdpa_weights(q, k, is_causal=True)
    return out


def test_bf16_mixed_is_captured_in_autocast_and_training_is_unchanged(tmp_path):
    plain, plain_trainer = _fit_mixed(tmp_path / "plain", [])
    lit, trainer = _fit_mixed(tmp_path / "watched", [AttentionMonitor(tokens=VOCAB, plots=["heatmap"])])
    assert trainer.precision == "bf16-mixed"
    _assert_captured_every_validation(trainer, LAYERS, [1, 3])
    for (name, a), b in zip(plain.state_dict().items(), lit.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # capturing under autocast changes nothing in training
    assert trainer.logged_metrics.keys() == plain_trainer.logged_metrics.keys()
    for key, value in plain_trainer.logged_metrics.items():
        assert torch.equal(trainer.logged_metrics[key], value), key

    # the callback captured inside Lightning's autocast: the maps of the bfloat16 q and k
    lit.eval()
    _assert_saved_capture_matches(
        trainer, _autocast_references(lit, _fixed_samples(), torch.bfloat16), FLOAT16_STORAGE
    )


def test_16_mixed_on_cpu_falls_back_to_bf16_and_still_logs(tmp_path):
    with pytest.warns(
        UserWarning, match=r"AMP with fp16 is not supported on CPU\. Using `precision='bf16-mixed'`"
    ):
        lit, trainer = _fit_mixed(tmp_path, [AttentionMonitor(plots=["heatmap"])], precision="16-mixed")
    assert trainer.precision == "bf16-mixed"  # Lightning 2.6 has no float16 AMP on CPU
    _assert_captured_every_validation(trainer, LAYERS, [1, 3])
    lit.eval()
    _assert_saved_capture_matches(
        trainer, _autocast_references(lit, _fixed_samples(), torch.bfloat16), FLOAT16_STORAGE
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_capture_under_cpu_autocast_is_float32_from_the_kernels_inputs(dtype):
    lit = LitGPT().eval()
    idx = torch.randint(0, 32, (3, 10))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=dtype):
            plain = lit(idx)
            with capture_attention(lit) as cap:
                out = lit(idx)
        float32 = _references(lit.model, idx, "model.")
    assert torch.equal(out, plain)
    low = _autocast_references(lit, idx, dtype)
    assert list(cap.maps) == LAYERS
    for key, weights in cap.maps.items():
        assert weights.dtype == torch.float32
        assert_close(weights, low[key][:2])  # exact for what the kernel received
        assert_close(weights, float32[key][:2], tol=3e-2)  # and close to the float32 model, within bf16/fp16
