"""AttentionMonitor in a real Trainer, writing real TensorBoard event files."""

import csv
import io
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import assert_no_taps
from lightning_models import (
    VOCAB,
    LitEncoder,
    LitGPT,
    LitNoAttention,
    LitPrevious,
    make_trainer,
    read_events,
    token_loader,
)
from matplotlib.image import imread
from pytorch_lightning.loggers import CSVLogger

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.analysis.views import ROLES
from lightning_attnviz.sinks.tags import Tags

MODULES_TAG = Tags().modules


def _png(event) -> np.ndarray:
    return imread(io.BytesIO(event.encoded_image_string), format="png")[..., :3]


def test_documented_tags_one_step_per_capture(tmp_path):
    monitor = AttentionMonitor(tokens=VOCAB, heads=[1])
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)

    layers = ["model.h.0.attn", "model.h.1.attn"]
    expected = {f"attention/sample_{s}/atlas" for s in range(2)}
    for s in range(2):
        for layer in layers:
            for kind in ("heatmap", "head_1", "heads", "evolution"):  # arrows only when asked for
                expected.add(f"attention/sample_{s}/{layer}/{kind}")
    # the whole model's layer × head matrices, one per metric (drift from the second capture on)
    metrics = ("entropy_norm", "distance", "sink", "max_weight", "drift", "max_logit", *ROLES)
    expected |= {f"attention/stats/{m}" for m in metrics}
    assert set(events.Tags()["images"]) == expected
    steps = [2, 5, 8]  # one capture per validation run, at the step Lightning logs val_loss at
    for tag in expected:
        images = events.Images(tag)
        assert [e.step for e in images] == (steps[1:] if tag.endswith("stats/drift") else steps), tag
        if not tag.endswith("evolution"):
            assert len({(e.width, e.height) for e in images}) == 1, tag  # same size every capture
        assert _png(images[-1]).std() > 0.05, tag  # not blank
    heatmap = events.Images("attention/sample_0/model.h.0.attn/heatmap")[0]
    assert 300 < heatmap.width < 700 and 250 < heatmap.height < 600
    assert events.Tensors(MODULES_TAG + "/text_summary")  # the module table, once
    assert len(events.Tensors(MODULES_TAG + "/text_summary")) == 1
    text = events.Tensors(MODULES_TAG + "/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| model.h.0.attn | CausalSelfAttention | 4 | sdpa |" in text


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    index = np.flatnonzero(flags)
    runs = np.split(index, np.flatnonzero(np.diff(index) > 1) + 1)
    run = max(runs, key=len)
    return run[0], run[-1]


def _heatmap_cells(image: np.ndarray, length: int) -> np.ndarray:
    """Sample the centre of each cell of a heatmap image's map area → (length, length) brightness."""
    yellow = (image[..., 0] > 0.9) & (image[..., 1] > 0.8) & (image[..., 2] < 0.3)  # viridis max
    purple = (image[..., 0] < 0.35) & (image[..., 1] < 0.1) & (image[..., 2] > 0.25)  # viridis min
    gray = (np.abs(image - 215 / 255) < 0.01).all(-1)  # masked cells
    colored = yellow | purple | gray
    x0, x1 = _longest_run(colored.sum(0) > 5)  # the map, not the (narrower) colorbar
    y0, y1 = _longest_run(colored[:, x0 : x1 + 1].sum(1) > 5)
    centres_x = x0 + (np.arange(length) + 0.5) * (x1 - x0 + 1) / length
    centres_y = y0 + (np.arange(length) + 0.5) * (y1 - y0 + 1) / length
    return yellow[centres_y.astype(int)[:, None], centres_x.astype(int)[None, :]]


def test_planted_previous_token_pattern_draws_a_subdiagonal(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(samples=1, plots=["heatmap"])], max_epochs=1)
    trainer.fit(LitPrevious(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    (event,) = events.Images("attention/sample_0/attn/heatmap")
    bright = _heatmap_cells(_png(event), 10)
    expected = np.eye(10, k=-1, dtype=bool)
    expected[0, 0] = True
    assert (bright == expected).all(), bright.astype(int)


def _fit(tmp_path, module_cls, callbacks, **kwargs):
    pl.seed_everything(7, verbose=False)
    model = module_cls()
    trainer = make_trainer(tmp_path, callbacks, **kwargs)
    trainer.fit(model, token_loader(pad=module_cls is LitEncoder), token_loader(seed=1, pad=True))
    metrics = trainer.validate(model, token_loader(seed=1, pad=True), verbose=False)
    return model, trainer, metrics


@pytest.mark.parametrize("module_cls", [LitGPT, LitEncoder], ids=["nanogpt", "nn_transformer_padding"])
def test_training_is_bit_identical_with_and_without_the_callback(tmp_path, module_cls):
    plain, plain_trainer, plain_metrics = _fit(tmp_path / "plain", module_cls, [])
    monitor = AttentionMonitor(every_n_steps=2, tokens=VOCAB)
    watched, trainer, metrics = _fit(tmp_path / "watched", module_cls, [monitor])
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert metrics == plain_metrics
    assert {k: v.item() for k, v in trainer.logged_metrics.items()} == {
        k: v.item() for k, v in plain_trainer.logged_metrics.items()
    }
    assert read_events(trainer.logger.log_dir).Tags()["images"]  # it did capture
    assert_no_taps(watched)


def test_no_taps_remain_after_a_fit_that_raises(tmp_path):
    class Exploding(LitGPT):
        def training_step(self, batch, batch_idx):
            if self.global_step == 2:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    model = Exploding()
    trainer = make_trainer(tmp_path, [AttentionMonitor(every_n_steps=1)])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(model, token_loader(), token_loader(seed=1))
    assert_no_taps(model)
    assert read_events(trainer.logger.log_dir).Images("attention/sample_0/model.h.0.attn/heatmap")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(every_n_epochs=-1), r"`every_n_epochs` must be an int >= 0, got -1"),
        (dict(every_n_steps=0), r"`every_n_steps` must be an int >= 1 or None, got 0"),
        (dict(samples=0), r"`samples` must be an int >= 1, got 0"),
        (dict(max_tokens=1), r"`max_tokens` must be an int >= 2, got 1"),
        (dict(top_k=0), r"`top_k` must be an int >= 1, got 0"),
        (
            dict(plots=["heatmap", "pie"]),
            r"`plots` must be a list of plot kinds drawn from \[.heatmap., .heads.",
        ),
        (dict(heads=[-1]), r"`heads` must be a list of head indices >= 0; -1 is not, got \[-1\]"),
        (dict(image_mean=[0.5, 0.5]), r"`image_mean` must be None or 1 or 3 numbers"),
        (dict(image_std=[0.5, 0.0, 0.5]), r"`image_std` must hold finite numbers > 0"),
        (
            dict(image_mean=[0.5, 0.4, 0.3]),
            r"`image_mean` and `image_std` .* pass both or neither, got image_mean=\(0.5, 0.4, 0.3\) "
            r"and image_std=None",
        ),
        (
            dict(image_std=[0.2]),
            r"`image_mean` and `image_std` .* pass both or neither, got image_mean=None and "
            r"image_std=\(0.2,\)",
        ),
        (dict(max_tokens=129), r"`max_tokens` \(rows/columns a picture draws\) must be an int in \[2, 128\]"),
        (dict(rollout_discard=1.0), r"`rollout_discard` must be a fraction in \[0, 1\), got 1.0"),
        (dict(name="a b"), r"`name` must be None or 1-40 letters"),
    ],
)
def test_constructor_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttentionMonitor(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(samples=2.5), r"`samples` must be an int >= 1, got 2.5"),
        (dict(plots="heatmap"), r"`plots` must be a list of plot kinds .* or None, got 'heatmap'"),
        (dict(plots=5), r"`plots` must be a list of plot kinds .* or None, got 5"),
        (dict(heads=None), r"`heads` must be a list of head indices >= 0, got None"),
        (dict(layers=3), r"`layers` must be a list of layer indices or names/globs or None, got 3"),
        (dict(forward_fn="model"), r"`forward_fn` must be a callable"),
        (dict(tokens=3), r"`tokens` must be None, a tokenizer"),
        (dict(modules=3), r"`modules` must be None, a name or glob, a list of them, or a predicate"),
        (dict(modules=["x", 3]), r"`modules` must be None, a name or glob, .*3 is not a name"),
        (dict(sample_input="text"), r"`sample_input` must be a tensor or a batch"),
        (dict(log_sanity_check=1), r"`log_sanity_check` must be True or False, got 1"),
        (dict(image_mean="0.5"), r"`image_mean` must be None or 1 or 3 numbers"),
        (dict(every_n_epochs=True), r"`every_n_epochs` must be an int >= 0, got True"),
    ],
)
def test_constructor_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        AttentionMonitor(**kwargs)


def test_numpy_integers_and_floats_are_accepted():
    monitor = AttentionMonitor(
        samples=np.int64(1), every_n_epochs=np.int32(2), rollout_discard=np.float64(0.1)
    )
    assert monitor.config.samples == 1 and type(monitor.config.samples) is int
    assert monitor.config.every_n_epochs == 2


def test_no_tensorboard_logger_warns_once_and_training_goes_on(tmp_path):
    """Without a TensorBoardLogger the monitor still logs: a CSVLogger gets the scalars in
    metrics.csv and the pictures as PNG files (a CSV cannot hold them), without a warning; only a
    Trainer without any logger is told that nothing is logged (once)."""
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = make_trainer(tmp_path, [AttentionMonitor()], logger=logger)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    assert not [w for w in record if "AttentionMonitor" in str(w.message)]
    stat = "attention_stats/entropy/model.h.0.attn/mean"
    with open(f"{logger.log_dir}/metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f) if r.get(stat)] == [2, 5]
    for step in (2, 5):
        picture = imread(f"{logger.log_dir}/attention/step_{step}/sample_0/model.h.0.attn/heatmap.png")
        assert picture.ndim == 3 and picture.shape[0] > 50

    trainer = make_trainer(tmp_path, [AttentionMonitor()], logger=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    told = [w for w in record if "nothing is logged" in str(w.message)]
    assert len(told) == 1 and told[0].category is RuntimeWarning
    assert "`logger=False`" in str(told[0].message)


def test_no_attention_modules_warns(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor()])
    with pytest.warns(RuntimeWarning, match=r"found no attention modules in LitNoAttention"):
        trainer.fit(LitNoAttention(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished


def test_unknown_module_name_warns(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(modules=["model.h.0.atn"])])
    with pytest.warns(RuntimeWarning, match=r"no module matches the name 'model.h.0.atn'.*'model.h.0.attn'"):
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))


@pytest.mark.parametrize("how", ["no_loader", "limit_0", "empty_loader"])
def test_no_validation_batches_warns_and_still_logs(tmp_path, how):
    kwargs = {"limit_val_batches": 0} if how == "limit_0" else {}
    trainer = make_trainer(tmp_path, [AttentionMonitor()], **kwargs)
    val = {"no_loader": None, "limit_0": token_loader(seed=1), "empty_loader": token_loader(n=0)}[how]
    with pytest.warns(RuntimeWarning, match=r"no validation batch ran in epoch 0.*first training batch"):
        trainer.fit(LitGPT(), token_loader(), val)
    events = read_events(trainer.logger.log_dir)
    # at each epoch's end, where Lightning logs the epoch's own metrics (after its last step counted)
    assert [e.step for e in events.Images("attention/sample_0/model.h.0.attn/heatmap")] == [3, 6]


def test_schedule_options(tmp_path):
    monitor = AttentionMonitor(every_n_epochs=2, every_n_steps=4, log_sanity_check=True, plots=["heatmap"])
    trainer = make_trainer(tmp_path, [monitor], max_epochs=4, num_sanity_val_steps=1)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    steps = [
        e.step
        for e in read_events(trainer.logger.log_dir).Images("attention/sample_0/model.h.0.attn/heatmap")
    ]
    assert steps == [0, 3, 5, 7, 11]  # sanity check (0), steps 4, 8, 12 (logged at 3, 7, 11, as
    # Lightning logs their training metrics), every 2nd validation (after steps 6 and 12: at 5 and 11)


def test_fast_dev_run_and_check_val_every_n_epoch(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"])], fast_dev_run=True, logger=True)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))  # fast_dev_run uses a dummy logger
    trainer = make_trainer(
        tmp_path, [AttentionMonitor(plots=["heatmap"])], max_epochs=4, check_val_every_n_epoch=2
    )
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    steps = [
        e.step
        for e in read_events(trainer.logger.log_dir).Images("attention/sample_0/model.h.0.attn/heatmap")
    ]
    assert steps == [5, 11]


def test_user_samples_forward_fn_layers_and_long_sequences(tmp_path):
    seen = []

    def forward_fn(module, inputs):
        seen.append(inputs["ids"].shape)
        return module(inputs["ids"])

    sample = {"ids": torch.randint(1, 32, (3, 12))}
    monitor = AttentionMonitor(
        sample_input=sample,
        forward_fn=forward_fn,
        layers=[-1],
        tokens=lambda ids: [f"<{i}>" for i in ids],
        plots=["heatmap", "heads"],
        max_tokens=8,
    )
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert seen == [(2, 12)]  # the first `samples` rows of the given input
    tags = read_events(trainer.logger.log_dir).Tags()["images"]
    assert sorted(tags) == sorted(
        f"attention/sample_{s}/model.h.1.attn/{k}" for s in range(2) for k in ("heatmap", "heads")
    )


@pytest.mark.parametrize("error", [KeyError("no such token"), SystemExit(3)])
def test_a_failing_labeller_costs_the_labels_only(tmp_path, error):
    def broken_decoder(ids):
        raise error

    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=broken_decoder)])
    with pytest.warns(RuntimeWarning, match=r"`tokens` failed to label the samples \((KeyError|SystemExit)"):
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    events = read_events(trainer.logger.log_dir)
    assert events.Tensors(MODULES_TAG + "/text_summary")  # what did not fail was still written
    assert [e.step for e in events.Images("attention/sample_0/model.h.0.attn/heatmap")] == [2, 5]
    assert [e.step for e in events.Scalars("attention_stats/entropy/model.h.0.attn/mean")] == [2, 5]


def test_hugging_face_model_fed_dicts_with_several_loggers(tmp_path):
    from lightning_models import DictTokens, LitBert
    from pytorch_lightning.loggers import TensorBoardLogger

    vocab = {i: f"tok{i}" for i in range(50)}
    loggers = [CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path, name="tb", version=0)]
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=vocab, plots=["heatmap"])], logger=loggers)
    loader = torch.utils.data.DataLoader(DictTokens(), batch_size=4)
    trainer.fit(LitBert(), loader, torch.utils.data.DataLoader(DictTokens(seed=1), batch_size=4))
    events = read_events(tmp_path / "tb" / "version_0")
    tags = events.Tags()["images"]
    assert sorted(tags) == sorted(
        f"attention/sample_{s}/bert.encoder.layer.{i}.attention.self/heatmap"
        for s in range(2)
        for i in range(2)
    )
    text = events.Tensors(MODULES_TAG + "/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| bert.encoder.layer.0.attention.self | BertSelfAttention | 4 | sdpa |" in text


def test_state_key_is_stable_across_processes_for_a_predicate():
    def is_attention(name, module):
        return name.endswith("attn")

    key = AttentionMonitor(modules=is_attention).state_key
    assert "0x" not in key and "is_attention" in key  # a memory address would never match on resume
    assert AttentionMonitor(modules=is_attention).state_key == key
