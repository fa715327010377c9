"""Regression tests: one per reported behaviour, through the public surface only (constructor,
Trainer.fit, event files, files on disk, warnings, the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning_models import VOCAB, LitGPT, LitPrevious, lit_gpt_for, make_trainer, read_events, token_loader
from torch import nn
from torch.utils.data import DataLoader

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.sinks.capture_file import load_capture, save_capture

HEATMAP = "attention/sample_0/model.h.0.attn/heatmap"


def _steps(events, tag: str, kind: str = "Images") -> list[int]:
    return [e.step for e in getattr(events, kind)(tag)]


def _messages(record) -> list[str]:
    return [str(w.message) for w in record]


# -- 1. a batch dict holding a 0-d tensor ---------------------------------------------------------


class TinyAttention(nn.Module):
    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (t.view(B, L, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(D, dim=2))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, D)


class LitTemperature(LitGPT):
    """Fed dict batches ``{"x": ids, "temperature": 0-d tensor}``; forward(x, temperature)."""

    def __init__(self) -> None:
        import pytorch_lightning as pl

        pl.LightningModule.__init__(self)
        self.embed = nn.Embedding(32, 16)
        self.attn = TinyAttention()
        self.head = nn.Linear(16, 32)

    def forward(self, x: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(x))) / temperature

    def _loss(self, batch) -> torch.Tensor:
        logits = self(**batch)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["x"][:, 1:].flatten())

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self._loss(batch)


def _dict_loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    batches = [
        {"x": torch.randint(1, 32, (8, 10), generator=g), "temperature": torch.tensor(1.0)} for _ in range(4)
    ]
    return DataLoader(batches, batch_size=None)  # each dict is a batch as it is


def test_dict_batch_with_a_0d_tensor(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"])])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(LitTemperature(), _dict_loader(0), _dict_loader(1))
    assert trainer.state.finished
    assert not [m for m in _messages(record) if "capture forward failed" in m]
    events = read_events(trainer.logger.log_dir)
    assert _steps(events, "attention/sample_0/attn/heatmap") == [2, 5]
    assert _steps(events, "attention/sample_1/attn/heatmap") == [2, 5]


# -- 2. global state of the user's process is left alone ------------------------------------------


class MyCustomWarning(UserWarning):
    pass


def test_fit_leaves_warning_filters_dtype_and_rcparams_unchanged(tmp_path):
    warnings.simplefilter("error", MyCustomWarning)
    filters = list(warnings.filters)
    dtype = torch.get_default_dtype()
    rc = dict(matplotlib.rcParams)
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=VOCAB)], max_epochs=1)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    assert warnings.filters == filters
    assert torch.get_default_dtype() == dtype
    assert dict(matplotlib.rcParams) == rc
    assert read_events(trainer.logger.log_dir).Images(HEATMAP)


# -- 3. bf16-true ---------------------------------------------------------------------------------


def test_bf16_true_logs_every_capture(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=VOCAB)], precision="bf16-true")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    messages = _messages(record)
    assert not [m for m in messages if "ScalarType" in m], messages
    assert not [m for m in messages if "AttentionMonitor" in m], messages
    events = read_events(trainer.logger.log_dir)
    tags = events.Tags()["images"]
    assert HEATMAP in tags
    for tag in tags:  # drift, a change, exists from the second capture on
        assert _steps(events, tag) == ([5] if tag.endswith("/drift") else [2, 5]), tag
    assert _steps(events, "attention_stats/entropy/model.h.0.attn/mean", "Scalars") == [2, 5]


# -- 4. one monitor, two fits ---------------------------------------------------------------------


def test_one_monitor_for_two_fits_starts_each_fit_afresh(tmp_path):
    monitor = AttentionMonitor(tokens=VOCAB, plots=["heatmap", "evolution"])
    first = make_trainer(tmp_path / "a", [monitor])
    first.fit(LitGPT(), token_loader(), token_loader(seed=1))
    second = make_trainer(tmp_path / "b", [monitor])
    second.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert first.logger.log_dir != second.logger.log_dir
    for trainer in (first, second):
        events = read_events(trainer.logger.log_dir)
        assert len(events.Tensors("attention/modules/text_summary")) == 1
        assert events.Tensors("custom_scalars__config__")
        assert _steps(events, HEATMAP) == [2, 5]
        # drift needs a previous capture of the same fit: it starts at the fit's second capture
        assert _steps(events, "attention_stats/drift/model.h.0.attn/mean", "Scalars") == [5]
        # the strip starts over too: the second fit's first strip holds one capture, like the first fit's
    strips = [
        read_events(t.logger.log_dir).Images(HEATMAP.replace("heatmap", "evolution")) for t in (first, second)
    ]
    assert [e.width for e in strips[0]] == [e.width for e in strips[1]]


# -- 5. sink_tokens -------------------------------------------------------------------------------


class UniformAttention(nn.Module):
    """q = 0: every query attends uniformly over every key."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.zeros_like(x)[:, None]
        return F.scaled_dot_product_attention(q, x[:, None], x[:, None])[:, 0]


def test_sink_tokens_24_of_32_uniform_keys_is_a_share_of_0_75(tmp_path):
    model = LitPrevious()
    model.attn = UniformAttention()
    trainer = make_trainer(tmp_path, [AttentionMonitor(sink_tokens=24, plots=[])], max_epochs=1)
    trainer.fit(model, token_loader(length=32), token_loader(length=32, seed=1))
    (sink,) = read_events(trainer.logger.log_dir).Scalars("attention_stats/sink/attn/mean")
    assert sink.value == pytest.approx(0.75, abs=1e-3)


# -- 6. step captures before the first validation -------------------------------------------------


def test_step_captures_before_validation_use_validation_rows(tmp_path):
    monitor = AttentionMonitor(every_n_steps=2, tokens=VOCAB, plots=["heatmap"])
    val = token_loader(seed=1)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(LitGPT(), token_loader(), val)
    first_val = next(iter(val))[0]
    saved = load_capture(tmp_path / "tb" / "version_0" / "attention_captures" / "step_00000002.npz")
    assert saved.step == 2
    for sample in range(2):
        (view,) = [v for v in saved.views if v.sample == sample and v.layer == "model.h.0.attn"]
        assert view.q_labels == [VOCAB[i] for i in first_val[sample].tolist()]
    assert torch.equal(monitor._samples.rows[0], first_val[:2])


# -- 7. two monitors in one Trainer ---------------------------------------------------------------


def test_two_unnamed_monitors_watching_different_modules_are_refused(tmp_path):
    monitors = [AttentionMonitor(modules="model.h.0.attn"), AttentionMonitor(modules="model.h.1.attn")]
    trainer = make_trainer(tmp_path, monitors)
    with pytest.raises(ValueError, match="`name`"):
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))


def test_two_identical_monitors_are_refused_by_lightning_and_the_docs_name_the_fix(tmp_path):
    # identical monitors share a state_key: Lightning refuses them when the Trainer is built, telling
    # the user to consult AttentionMonitor's documentation, which says to give each a distinct `name=`
    with pytest.raises(RuntimeError, match=r"more than one stateful callback of type `AttentionMonitor`"):
        make_trainer(tmp_path, [AttentionMonitor(), AttentionMonitor()])
    docs = (Path(__file__).resolve().parents[1] / "docs" / "callback.md").read_text()
    assert "Several monitors in one Trainer** need distinct `name=`" in docs
    assert "needed when one Trainer has two monitors" in AttentionMonitor.__doc__


def test_two_named_monitors_write_apart(tmp_path):
    monitors = [AttentionMonitor(name="a", plots=["heatmap"]), AttentionMonitor(name="b", plots=["heatmap"])]
    trainer = make_trainer(tmp_path, monitors)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    images = events.Tags()["images"]
    scalars = [t for t in events.Tags()["scalars"] if t.startswith("attention")]
    for name in ("a", "b"):
        assert _steps(events, f"attention_{name}/sample_0/model.h.0.attn/heatmap") == [2, 5]
        assert _steps(events, f"attention_stats_{name}/entropy/model.h.0.attn/mean", "Scalars") == [2, 5]
        captures = tmp_path / "tb" / "version_0" / f"attention_captures_{name}"
        assert sorted(p.name for p in captures.glob("step_*.npz")) == [
            "step_00000002.npz",
            "step_00000005.npz",
        ]
    assert all(t.startswith(("attention_a/", "attention_b/")) for t in images), images
    prefixes = tuple(f"attention_{kind}_{n}/" for kind in ("stats", "health", "roles") for n in "ab")
    assert all(t.startswith(prefixes) for t in scalars), scalars
    for tag in images:
        steps = _steps(events, tag)
        assert len(steps) == len(set(steps)), tag
    for tag in scalars:
        steps = _steps(events, tag, "Scalars")
        assert len(steps) == len(set(steps)), tag


# -- 8, 9. failing user code ----------------------------------------------------------------------


def test_failing_forward_fn_warns_once_and_the_fit_finishes(tmp_path):
    def forward_fn(module, inputs):
        raise RuntimeError("user forward broke")

    trainer = make_trainer(tmp_path, [AttentionMonitor(forward_fn=forward_fn, plots=["heatmap"])])
    with pytest.warns(RuntimeWarning, match="capture forward failed") as record:
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    failed = [m for m in _messages(record) if "capture forward failed" in m]
    assert len(failed) == 1 and "user forward broke" in failed[0]


def test_tokens_raising_system_exit_costs_the_labels_only(tmp_path):
    def tokens(ids):
        raise SystemExit(2)

    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=tokens, plots=["heatmap"])])
    with pytest.warns(RuntimeWarning, match="`tokens` failed to label"):
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    events = read_events(trainer.logger.log_dir)
    assert _steps(events, HEATMAP) == [2, 5]
    assert _steps(events, "attention_stats/entropy/model.h.0.attn/mean", "Scalars") == [2, 5]


# -- 10. a huge token label -----------------------------------------------------------------------


def test_a_10000_character_token_keeps_logged_images_bounded(tmp_path):
    val = token_loader(seed=1)
    first = next(iter(val))[0]
    vocab = list(VOCAB)
    for token in {first[0, 0].item(), first[1, 3].item()}:  # certainly among the fixed samples
        vocab[token] = "ж" * 10_000
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=vocab, plots=None)], max_epochs=1)
    trainer.fit(LitGPT(), token_loader(), val)
    assert trainer.state.finished
    events = read_events(trainer.logger.log_dir)
    tags = events.Tags()["images"]
    assert HEATMAP in tags
    for tag in tags:
        for e in events.Images(tag):
            assert e.width <= 4000 and e.height <= 4000, (tag, e.width, e.height)


# -- 11. a capture every step ---------------------------------------------------------------------


def test_every_step_capture_finishes_and_never_drops_silently(tmp_path):
    steps = 60
    monitor = AttentionMonitor(every_n_steps=1, plots=["heatmap"], histograms=False, dashboard=False)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3, limit_train_batches=20, limit_val_batches=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(LitPrevious(), token_loader(n=160), token_loader(seed=1))
    assert trainer.state.finished and trainer.global_step == steps
    logged = _steps(read_events(trainer.logger.log_dir), "attention/sample_0/attn/heatmap")
    assert logged and len(logged) == len(set(logged)) and set(logged) <= set(range(steps))
    if len(logged) < steps:
        assert any("captures arrive faster than they can be drawn" in m for m in _messages(record))


# -- 12. fast_dev_run -----------------------------------------------------------------------------


def test_fast_dev_run_warns(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor()], fast_dev_run=True)
    with pytest.warns(RuntimeWarning, match="nothing is logged under `fast_dev_run`"):
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished


# -- 13, 14. the CLI ------------------------------------------------------------------------------


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_attnviz", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _view(layer: str = "blocks.0.attn", sample: int = 0) -> AttentionView:
    labels = [f"t{i}" for i in range(4)]
    weights = np.full((2, 4, 4), 0.25, dtype=np.float32)
    return AttentionView(layer, sample, weights, None, labels, list(labels))


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(2000))


def _wrong_format(path):
    meta = {"format": "someone.else/7", "step": 1, "epoch": 0, "views": []}
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)))


def _huge_member(path):
    """A valid capture whose central directory then claims every member expands to ~2 GiB."""
    save_capture(path, [_view()], step=1, epoch=0)
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    assert at >= 0
    while at >= 0:
        data[at + 24 : at + 28] = (0x7FFF_FFF0).to_bytes(4, "little")  # uncompressed size
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make", [_random_bytes, _wrong_format, _huge_member])
def test_cli_render_of_a_bad_file_is_one_error_line(tmp_path, make):
    path = tmp_path / "step_00000001.npz"
    make(path)
    result = _cli("render", path, "--out", tmp_path / "out")
    assert result.returncode == 1, result
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:") and str(path) in lines[0], lines


@pytest.mark.parametrize(
    "char",
    [
        "a",
        "注",
    ],
    ids=["ascii", "cjk"],
)
def test_cli_render_of_a_300_character_layer_name_fits_file_systems(tmp_path, char):
    layer = ".".join([char * 29] * 10)  # 299 characters
    layer += char
    assert len(layer) == 300
    path = save_capture(tmp_path / "step_00000001.npz", [_view(layer)], step=1, epoch=0)
    out = tmp_path / "out"
    result = _cli("render", path, "--out", out, "--plots", "heatmap", "heads")
    assert result.returncode == 0, result.stderr
    written = list(out.iterdir())
    assert len(written) == 2
    for p in written:
        assert len(p.name.encode()) <= 255, (len(p.name.encode()), p.name)


def test_cli_gif_of_an_unknown_layer_lists_the_layers(tmp_path):
    captures = tmp_path / "attention_captures"
    for step in (1, 2):
        save_capture(
            captures / f"step_{step:08d}.npz", [_view("enc.0.attn"), _view("enc.1.attn")], step=step, epoch=0
        )
    result = _cli("gif", captures, "--layer", "wrong", "--out", tmp_path / "a.gif")
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert "enc.0.attn" in result.stderr and "enc.1.attn" in result.stderr, result.stderr
    assert not (tmp_path / "a.gif").exists()


# -- 15. both Lightning packages ------------------------------------------------------------------


def test_fit_with_the_unified_lightning_package(tmp_path):
    import lightning.pytorch as L
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = L.Trainer(
        logger=logger,
        callbacks=[AttentionMonitor(tokens=VOCAB, plots=["heatmap"])],
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(lit_gpt_for(L), token_loader(), token_loader(seed=1))
    assert _steps(read_events(logger.log_dir), HEATMAP) == [2, 5]


def test_fit_with_pytorch_lightning(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=VOCAB, plots=["heatmap"])], max_epochs=1)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert _steps(read_events(trainer.logger.log_dir), HEATMAP) == [2]


# -- 16. resume with another strip_length ---------------------------------------------------------


def _strip_fit(tmp_path, strip_length: int, max_epochs: int, ckpt_path=None):
    from pytorch_lightning.callbacks import ModelCheckpoint

    monitor = AttentionMonitor(tokens=VOCAB, plots=["evolution"], strip_length=strip_length)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, [monitor, checkpoint], max_epochs=max_epochs, enable_checkpointing=True)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1), ckpt_path=ckpt_path)
    return read_events(trainer.logger.log_dir).Images("attention/sample_0/model.h.0.attn/evolution")


def test_resume_with_a_shorter_strip_length_draws_shorter_strips(tmp_path):
    _strip_fit(tmp_path / "run", 3, 2)
    resumed = _strip_fit(tmp_path / "run", 2, 5, ckpt_path=tmp_path / "run" / "ckpt" / "last.ckpt")
    fresh = _strip_fit(tmp_path / "fresh", 2, 2)
    assert [e.step for e in resumed] == [2, 5, 8, 11, 14]
    # a strip grows by one column per capture up to strip_length: capped at 2 columns from the 2nd capture
    assert resumed[-1].width == resumed[-2].width == resumed[-3].width == fresh[-1].width
    assert fresh[0].width < fresh[1].width


def test_an_unwritable_capture_folder_costs_the_npz_only(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"])], max_epochs=1)
    log_dir = tmp_path / "tb" / "version_0"
    log_dir.mkdir(parents=True)
    (log_dir / "attention_captures").write_text("a file where the folder should be")
    with pytest.warns(RuntimeWarning, match=r"saving the capture file .*step_00000002.npz failed") as seen:
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert not [w for w in seen if "pictures" in str(w.message)]  # it does not blame the pictures
    events = read_events(log_dir)
    assert [e.step for e in events.Images("attention/sample_0/model.h.0.attn/heatmap")] == [2]
    assert events.Scalars("attention_stats/entropy/model.h.0.attn/mean")
