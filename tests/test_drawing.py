"""Where drawing sits in a fit: the steps pictures land at (Lightning's own), what a checkpoint holds
(small: captures in flight stay beside the logs), a resume after a crash, and the entry points that
log nothing (validate, test, predict)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from lightning_models import LitGPT, make_trainer, read_events, token_loader
from models import GPT, GPTConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from lightning_attnviz import AttentionMonitor

HEATMAP = "attention/sample_0/model.h.0.attn/heatmap"
STAT = "attention_stats/entropy/model.h.0.attn/mean"


def _scalar_steps(events, tag: str) -> list[int]:
    return [e.step for e in events.Scalars(tag)]


# -- steps that line up with Lightning's -------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        {},  # validation at each epoch's end
        {"val_check_interval": 2, "limit_train_batches": 4},  # mid-epoch, every 2 batches
        {"val_check_interval": 1, "accumulate_grad_batches": 2, "limit_train_batches": 4},  # mid-accumulation
        {"check_val_every_n_epoch": 2, "max_epochs": 4},
    ],
    ids=["epoch_end", "mid_epoch", "accumulating", "every_2nd_epoch"],
)
def test_pictures_and_scalars_land_at_the_step_lightning_logs_val_loss_at(tmp_path, schedule):
    board = TensorBoardLogger(tmp_path, name="tb", version=0)
    table = CSVLogger(tmp_path, name="csv", version=0)
    options = {"max_epochs": 2, **schedule}
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"])], logger=[board, table], **options)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    events = read_events(board.log_dir)
    val_steps = sorted(set(_scalar_steps(events, "val_loss")))  # what Lightning itself logged
    assert val_steps and [e.step for e in events.Images(HEATMAP)] == val_steps
    assert _scalar_steps(events, STAT) == val_steps
    with open(Path(table.log_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val_rows = {(r["step"], r["epoch"]) for r in rows if r.get("val_loss")}
    ours = {(r["step"], r["epoch"]) for r in rows if r.get(STAT)}
    assert ours == val_rows  # the same step and epoch as the validation metrics, never an empty epoch


def test_step_captures_land_where_lightning_logs_that_batch_s_training_metrics(tmp_path):
    monitor = AttentionMonitor(every_n_epochs=0, every_n_steps=2, plots=["heatmap"])
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2, log_every_n_steps=2)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    train_steps = _scalar_steps(events, "train_loss")  # after optimizer steps 2, 4, 6: logged at 1, 3, 5
    assert train_steps == [1, 3, 5] and [e.step for e in events.Images(HEATMAP)] == train_steps


# -- validate, test, predict --------------------------------------------------------------------------


class LitEvaluated(LitGPT):
    def test_step(self, batch, batch_idx):
        self.step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self(batch[0])


def test_validate_test_and_predict_log_nothing_and_say_so_once(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"])])
    model = LitEvaluated()
    trainer.fit(model, token_loader(), token_loader(seed=1))
    log_dir = Path(trainer.logger.log_dir)
    ours = [
        p for p in log_dir.rglob("*") if p.is_file() and (p.name.endswith(".attnviz") or p.suffix == ".npz")
    ]
    files = {p: p.read_bytes() for p in ours}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.validate(model, token_loader(seed=1))
        trainer.validate(model, token_loader(seed=2))
        trainer.test(model, token_loader(seed=3))
        trainer.predict(model, token_loader(seed=4))
    told = [str(w.message) for w in record if "AttentionMonitor" in str(w.message)]
    assert len(told) == 1 and "captures during `fit` only" in told[0]
    assert {p: p.read_bytes() for p in files} == files  # the fit's event file and captures untouched
    assert [e.step for e in read_events(log_dir).Images(HEATMAP)] == [2, 5]


def test_validate_alone_starts_no_drawing_process(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, warnings
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import torchvision_standin; torchvision_standin.install()
        from lightning_models import LitGPT, make_trainer, token_loader
        from lightning_attnviz import AttentionMonitor
        from lightning_attnviz.pipeline import worker
        warnings.simplefilter("ignore")
        trainer = make_trainer({str(tmp_path)!r}, [AttentionMonitor()])
        trainer.validate(LitGPT(), token_loader(seed=1))
        print(worker._shared is None)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "True"


# -- checkpoints ----------------------------------------------------------------------------------------


class LitDeep(LitGPT):
    """12 layers × 12 heads at 1024 tokens (a small width): the q/k of one capture are ~19 MB."""

    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.model = GPT(GPTConfig(block_size=1024, n_layer=12, n_head=12, n_embd=96))
        self.drop = torch.nn.Identity()


def _monitor_state(checkpoint: dict) -> dict:
    (key,) = [k for k in checkpoint["callbacks"] if "AttentionMonitor" in k]
    return checkpoint["callbacks"][key]


def _size(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def test_a_checkpoint_grows_by_the_samples_and_a_bounded_history_only(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1)
    trainer = make_trainer(
        tmp_path,
        [AttentionMonitor(), checkpoints],
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        enable_checkpointing=True,
    )
    trainer.fit(
        LitDeep(), token_loader(n=4, length=1024, batch_size=2), token_loader(n=2, length=1024, seed=1)
    )
    for path in sorted((tmp_path / "ckpt").glob("epoch=*.ckpt")):
        checkpoint = torch.load(path, weights_only=True)
        state = _monitor_state(checkpoint)
        growth = path.stat().st_size - _size({k: v for k, v in checkpoint.items() if k != "callbacks"})
        assert growth < 5e6, (path.name, growth)  # the samples (2 × 1024 ids) and the history
        keys = {"samples", "fixed", "train_fixed", "val_runs", "last_step", "pipeline", "inflight"}
        assert set(state) == keys
        for entry in state["inflight"]:  # a capture still drawing is named, and kept beside the logs
            assert set(entry) == {"step", "path"} and Path(entry["path"]).parent.name == ".attnviz_inflight"
    # each capture spooled at a checkpoint was drawn: its state after drawing is kept, its q/k are not
    spooled = list((tmp_path / "tb" / "version_0" / ".attnviz_inflight").iterdir())
    assert spooled and all(p.name.endswith(".drawn.pt") for p in spooled)


_CRASH = textwrap.dedent(
    """
    import json, os, signal, sys, time
    sys.path.insert(0, {tests!r})
    import torchvision_standin; torchvision_standin.install()
    import torch
    from lightning_models import LitGPT, make_trainer, token_loader
    from pytorch_lightning.callbacks import Callback, ModelCheckpoint
    from lightning_attnviz import AttentionMonitor
    from lightning_attnviz.pipeline import run
    from lightning_attnviz.pipeline.worker import shared_worker

    draw = run.Pipeline.run
    def slowly(self, job):  # a drawing process far behind: captures are in flight at each checkpoint
        time.sleep(3)
        return draw(self, job)
    run.Pipeline.run = slowly

    class Crash(Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # after the checkpoint of epoch 1
            if trainer.current_epoch < 2:
                return
            ckpt = torch.load({ckpt!r}, weights_only=True)
            (state,) = [v for k, v in ckpt["callbacks"].items() if "AttentionMonitor" in k]
            deadline = time.monotonic() + 60
            while not all(os.path.exists(e["path"]) or os.path.exists(e["path"][:-7] + ".drawn.pt")
                          for e in state["inflight"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            print(json.dumps([e["step"] for e in state["inflight"]]), flush=True)
            os.kill(shared_worker().link.pid, signal.SIGKILL)  # the machine goes down: both processes
            os._exit(3)

    monitor = AttentionMonitor(plots=["heatmap", "evolution"])
    checkpoint = ModelCheckpoint(dirpath={ckpt_dir!r}, save_last=True)
    trainer = make_trainer({out!r}, [monitor, checkpoint, Crash()], max_epochs=3, enable_checkpointing=True)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    """
)


def _resume(tmp_path: Path, log_dir: Path):
    monitor = AttentionMonitor(plots=["heatmap", "evolution"])
    logger = TensorBoardLogger(log_dir.parent.parent, name=log_dir.parent.name, version=0)
    trainer = make_trainer(tmp_path, [monitor], logger=logger, max_epochs=3, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert trainer.state.finished
    return [str(w.message) for w in record if "AttentionMonitor" in str(w.message)]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="simulates a crash with SIGKILL (POSIX)")
def test_a_resume_after_a_crash_draws_what_was_in_flight_or_says_what_it_cannot(tmp_path):
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    script = _CRASH.format(
        tests=os.path.dirname(__file__), ckpt=str(ckpt), ckpt_dir=str(ckpt.parent), out=str(tmp_path)
    )
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    in_flight = json.loads(crashed.stdout.strip().splitlines()[-1])
    assert in_flight and set(in_flight) <= {2, 5}  # the checkpoint after epoch 1 named them, nothing more
    log_dir = tmp_path / "tb" / "version_0"
    spool = log_dir / ".attnviz_inflight"

    # their files gone: the resume says which captures it cannot draw, and goes on
    hidden = tmp_path / "hidden"
    shutil.move(spool, hidden)
    elsewhere = tmp_path / "elsewhere" / "tb" / "version_0"
    messages = _resume(tmp_path, elsewhere)
    (told,) = [m for m in messages if "cannot be drawn now" in m]
    assert f"step(s) {', '.join(map(str, in_flight))}" in told
    assert [e.step for e in read_events(elsewhere).Images(HEATMAP)] == [8]
    shutil.move(hidden, spool)

    # their files there: drawn now, each once, and the history goes on from them
    messages = _resume(tmp_path, log_dir)
    assert not [m for m in messages if "cannot be drawn" in m]
    events = read_events(log_dir)
    assert [e.step for e in events.Images(HEATMAP)] == [2, 5, 8]
    assert _scalar_steps(events, "attention_stats/drift/model.h.0.attn/mean") == [5, 8]
    strips = events.Images(HEATMAP.replace("heatmap", "evolution"))
    assert strips[0].width < strips[1].width < strips[2].width
