"""Every Lightning logger gets its share: real fits with CSVLogger, WandbLogger (offline),
MLFlowLogger (a local file: store), a logger of the user's own, alone and together, in both
Lightning packages; what they received is read back from their files."""

from __future__ import annotations

import csv
import importlib
import io
import json
import re
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from lightning_models import VOCAB, lit_gpt_for, read_events, token_loader
from PIL import Image

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.sinks.base import EncodedPicture, Outputs
from lightning_attnviz.sinks.loggers import CSVSink, LoggerSinks
from lightning_attnviz.sinks.names import Names, file_path, mlflow_name, wandb_name

STEPS = [2, 5]  # two epochs of three steps: a capture at each validation, where val_loss is logged
STAT = "attention_stats/entropy/model.h.0.attn/mean"
HEATMAP = "attention/sample_0/model.h.0.attn/heatmap"
PACKAGES = ["pytorch_lightning", "lightning.pytorch"]


def _package(name: str):
    return importlib.import_module(name), importlib.import_module(f"{name}.loggers")


def _lit_gpt(pl):
    return lit_gpt_for(pl)


def _fit(pl, loggers, monitor=None, **kwargs):
    """Two epochs of three steps; returns the AttentionMonitor warnings raised."""
    monitor = monitor or AttentionMonitor(tokens=VOCAB, plots=["heatmap", "atlas"])
    options = dict(max_epochs=2, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0)
    options.update(kwargs)
    trainer = pl.Trainer(
        logger=loggers,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        **options,
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(_lit_gpt(pl), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    return [str(w.message) for w in record if "AttentionMonitor" in str(w.message)]


# -- reading back what each logger wrote ---------------------------------------------------------------


def _csv_rows(log_dir) -> list[dict[str, str]]:
    with open(Path(log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _check_csv(log_dir, steps=tuple(STEPS)) -> None:
    rows = _csv_rows(log_dir)
    assert [int(r["step"]) for r in rows if r.get(STAT)] == list(steps)
    assert all(0 < float(r[STAT]) < np.log(10) for r in rows if r.get(STAT))
    for step in steps:
        folder = Path(log_dir) / "attention" / f"step_{step}"
        with Image.open(folder / "sample_0/model.h.0.attn/heatmap.png") as image:
            assert image.format == "PNG" and image.width > 50
        assert (folder / "sample_1/atlas.png").is_file()
        assert not list(folder.rglob(".*.partial"))
    assert "model.h.0.attn" in (Path(log_dir) / "attention/step_2/modules.md").read_text()


def _wandb_records(path: Path) -> list:
    """The Record protos of an offline run's ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of
    chunks with a 7-byte header: crc32c, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunks, pending = path.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            chunks.append(pending)
    records = []
    for chunk in chunks:
        records.append(pb.Record())
        records[-1].ParseFromString(chunk)
    return records


def _wandb_rows(save_dir) -> list[dict[tuple[str, ...], object]]:
    """History rows of the offline run, once its file is complete: in offline mode ``wandb.finish()``
    returns before wandb-core has written the last records, the ``exit`` record comes last."""
    (path,) = Path(save_dir).glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    while True:
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return [
        {tuple(i.nested_key) or (i.key,): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def _check_wandb(save_dir, steps=tuple(STEPS)) -> None:
    rows = [r for r in _wandb_rows(save_dir) if (wandb_name(STAT),) in r]
    assert [r[("trainer/global_step",)] for r in rows] == list(steps)
    key = wandb_name(HEATMAP)
    assert key == "attention/sample_0/model_h_0_attn/heatmap"
    for row in rows:  # the pictures in the same row as the scalars of their capture
        assert row[(key, "_type")] == "image-file" and row[(key, "width")] > 50
        assert f"step {row[('trainer/global_step',)]}" in row[(key, "caption")]
        assert row[("attention_hist/model_h_0_attn", "_type")] == "histogram"
    assert rows[0][("attention/modules", "_type")] == "table-file"


def _check_mlflow(tracking_uri: str, run_id: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    assert [m.step for m in client.get_metric_history(run_id, STAT)] == STEPS
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    # log_image's file names: images/<key, / as ~>+step+<step>+timestamp+… (MLflow < 3.x: # and %)
    keys = [f"images/{mlflow_name(HEATMAP).replace('/', sep)}" for sep in "~#"]
    for step in STEPS:
        marks = (f"+step+{step}+", f"%step%{step}%")
        assert any(p.startswith(tuple(keys)) and any(m in p for m in marks) for p in images), images
    modules = client.download_artifacts(run_id, "attention/modules/step_2.md")
    assert "model.h.0.attn" in Path(modules).read_text()


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # no network; WandbLogger(offline=True) would leak it
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield wandb
    wandb.finish()


@pytest.fixture
def mlflow_file_store(monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path / 'mlruns'}"


# -- each logger alone --------------------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_csv_logger_gets_scalars_in_metrics_csv_and_pictures_as_pngs(tmp_path, package):
    pl, loggers = _package(package)
    logger = loggers.CSVLogger(tmp_path, name="csv", version=0)
    assert _fit(pl, logger) == []
    _check_csv(logger.log_dir)
    assert sorted(p.name for p in (Path(logger.log_dir) / "attention_captures").iterdir()) == [
        "step_00000002.npz",
        "step_00000005.npz",
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_wandb_offline_gets_pictures_scalars_histograms_and_module_table(tmp_path, package, wandb_offline):
    pl, loggers = _package(package)
    logger = loggers.WandbLogger(save_dir=tmp_path, project="attnviz")
    assert _fit(pl, logger) == []
    wandb_offline.finish()
    _check_wandb(tmp_path)
    run_dir = tmp_path / "attnviz" / logger.version  # where ModelCheckpoint would put the run's files
    assert len(list(run_dir.glob("attention_captures/*.npz"))) == 2


@pytest.mark.parametrize("package", PACKAGES)
def test_mlflow_gets_step_indexed_images_and_metrics(tmp_path, package, mlflow_file_store):
    pl, loggers = _package(package)
    logger = loggers.MLFlowLogger(experiment_name="attnviz", tracking_uri=mlflow_file_store)
    assert _fit(pl, logger, default_root_dir=tmp_path) == []
    _check_mlflow(mlflow_file_store, logger.run_id)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_logger_at_once_each_gets_its_share(tmp_path, package, wandb_offline, mlflow_file_store):
    pl, loggers = _package(package)
    board = loggers.TensorBoardLogger(tmp_path, name="tb", version=0)
    table = loggers.CSVLogger(tmp_path, name="csv", version=0)
    wandb = loggers.WandbLogger(save_dir=tmp_path, project="attnviz")
    mlflow = loggers.MLFlowLogger(experiment_name="attnviz", tracking_uri=mlflow_file_store)
    assert _fit(pl, [board, table, wandb, mlflow]) == []
    wandb_offline.finish()
    events = read_events(board.log_dir)
    assert [e.step for e in events.Images(HEATMAP)] == STEPS
    assert [e.step for e in events.Scalars(STAT)] == STEPS
    _check_csv(table.log_dir)
    _check_wandb(tmp_path)
    _check_mlflow(mlflow_file_store, mlflow.run_id)
    # saved captures go to the TensorBoard folder, once
    assert len(list(Path(board.log_dir).glob("attention_captures/*.npz"))) == 2
    assert not (Path(table.log_dir) / "attention_captures").exists()


def test_every_capture_reaches_every_logger_on_a_busy_machine(tmp_path, wandb_offline):
    """Two processes keep both cores busy: every capture taken still reaches TensorBoard, the CSV
    and W&B before `fit` returns, the last one (taken at the end of the fit) included."""
    pl, loggers = _package("pytorch_lightning")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        board = loggers.TensorBoardLogger(tmp_path, name="tb", version=0)
        table = loggers.CSVLogger(tmp_path, name="csv", version=0)
        wandb = loggers.WandbLogger(save_dir=tmp_path, project="attnviz")
        assert _fit(pl, [board, table, wandb], max_epochs=4) == []
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    wandb_offline.finish()
    steps = [2, 5, 8, 11]  # one capture per validation: validation captures are never skipped
    events = read_events(board.log_dir)
    assert [e.step for e in events.Images(HEATMAP)] == steps
    assert [e.step for e in events.Scalars(STAT)] == steps
    _check_csv(table.log_dir, steps)
    _check_wandb(tmp_path, steps)


def _recording_logger(pl_loggers, fail: bool = False):
    class Recording(pl_loggers.Logger):
        """A logger of the user's own: keeps what log_metrics received."""

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[tuple[int | None, dict]] = []

        name = "recording"
        version = 0

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass

        def log_metrics(self, metrics, step=None) -> None:
            if fail and any(k.startswith("attention") for k in metrics):
                raise OSError("disk full")
            self.rows.append((step, dict(metrics)))

    return Recording()


def test_another_logger_gets_the_scalars_through_log_metrics(tmp_path):
    pl, loggers = _package("pytorch_lightning")
    logger = _recording_logger(loggers)
    assert _fit(pl, logger, default_root_dir=tmp_path) == []
    assert [step for step, row in logger.rows if STAT in row] == STEPS
    assert len(list(tmp_path.glob("recording/version_0/attention_captures/*.npz"))) == 2


def test_a_logger_that_takes_nothing_is_named_once(tmp_path):
    pl, loggers = _package("pytorch_lightning")
    board = loggers.TensorBoardLogger(tmp_path, name="tb", version=0)
    other = _recording_logger(loggers)
    messages = _fit(pl, [board, other], AttentionMonitor(stats=False, plots=["heatmap"]))
    assert len([m for m in messages if "Recording takes only scalars" in m]) == 1
    assert [e.step for e in read_events(board.log_dir).Images(HEATMAP)] == STEPS
    assert not [row for _, row in other.rows if any(k.startswith("attention") for k in row)]

    alone = _recording_logger(loggers)
    messages = _fit(pl, alone, AttentionMonitor(stats=False), default_root_dir=tmp_path)
    assert any("no logger of this Trainer (Recording) can take what it logs" in m for m in messages)


def test_a_failing_logger_costs_the_others_nothing(tmp_path):
    pl, loggers = _package("pytorch_lightning")
    broken = _recording_logger(loggers, fail=True)
    table = loggers.CSVLogger(tmp_path, name="csv", version=0)
    messages = _fit(pl, [broken, table])
    failed = "writing to a logger failed (Recording: OSError: disk full)"
    assert len([m for m in messages if failed in m]) == 1
    _check_csv(table.log_dir)


def test_no_logger_warns_that_nothing_is_logged(tmp_path):
    pl, _ = _package("pytorch_lightning")
    messages = _fit(pl, False, default_root_dir=tmp_path)
    assert any("the Trainer has no logger (`logger=False`), so nothing is logged" in m for m in messages)


# -- names --------------------------------------------------------------------------------------------


def test_names_each_logger_accepts():
    tag = "attention_stats/entropy/encoder.layers.0.self_attn/head_3"
    assert wandb_name(tag) == "attention_stats/entropy/encoder_layers_0_self_attn/head_3"
    assert mlflow_name(tag) == tag  # MLflow keeps dots and slashes
    odd = "attention/sample_0/blöck..0/./x y:z/heatmap"
    assert re.fullmatch(r"[A-Za-z0-9_/]+", wandb_name(odd))
    name = mlflow_name(odd)
    assert re.fullmatch(r"[A-Za-z0-9_\-./ ]+", name) and "/./" not in name and "/../" not in name
    assert len(mlflow_name("attention/" + "x" * 400)) == 250
    assert len(mlflow_name("attention/" + "x" * 400, 150)) == 150


def test_file_names_are_safe_on_every_file_system():
    path = file_path("attention/sample_0/../层.attn/CON/" + "y" * 300 + "/.hidden")
    parts = path.split("/")
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+", p) for p in parts)
    assert all(len(p.encode()) <= 100 and not p.startswith(".") and p not in (".", "..") for p in parts)
    assert "CON" not in parts


def test_a_rewrite_never_merges_two_tags():
    names = Names(wandb_name)
    a, b = names("attention/h.0"), names("attention/h_0")
    assert a == "attention/h_0" and b != a and names("attention/h_0") == b


# -- CSV from a second thread --------------------------------------------------------------------------


def test_csv_rows_written_beside_the_training_thread_are_never_lost(tmp_path):
    """The Trainer calls save() after every log_metrics; the sink appends from the reader thread."""
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="csv", version=0)
    sinks = LoggerSinks([logger], stats=True, fallback_dir=str(tmp_path))
    sinks.open()
    ((name, sink),) = sinks.sinks
    assert name == "CSVLogger" and isinstance(sink, CSVSink)
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    picture = EncodedPicture(HEATMAP, "heatmap", 0, "model.h.0.attn", png.getvalue(), 4, 4)
    errors: list[BaseException] = []

    def ours() -> None:
        try:
            for step in range(300):
                sinks.write(Outputs(step, [picture] if step % 50 == 0 else [], {f"ours/{step % 7}": 1.0}))
        except BaseException as err:  # pragma: no cover - what the test looks for
            errors.append(err)

    thread = threading.Thread(target=ours)
    thread.start()
    for step in range(300):  # what Lightning's logger connector does on the training thread
        logger.log_metrics({f"theirs/{step % 5}": float(step)}, step=step)
        logger.save()
    thread.join()
    logger.save()
    sinks.close()
    assert not errors
    rows = _csv_rows(logger.log_dir)
    assert sum(any(k.startswith("ours/") and v for k, v in r.items()) for r in rows) == 300
    assert sum(any(k.startswith("theirs/") and v for k, v in r.items()) for r in rows) == 300
    assert "log_metrics" not in vars(logger.experiment)  # given back as it was
