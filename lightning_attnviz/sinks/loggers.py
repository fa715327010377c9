"""Every Lightning logger gets what it can show: one sink per logger of ``trainer.loggers``.

The first TensorBoardLogger gets everything, written by the drawing process itself
(:mod:`lightning_attnviz.sinks.tensorboard`). The other loggers are written here, in the training process, on
the worker's reader thread (never the training thread), before a capture counts as drawn — so the
end-of-fit drain also waits for them. Each logger is called the way it allows from a second thread:

- W&B: ``Run.log`` encodes the row and its media in the calling thread and hands one whole record to
  W&B's own asyncio thread, the only one writing to wandb-core. Rows go through
  ``WandbLogger.log_metrics``, which puts ``trainer/global_step`` in the row: passing ``step=`` to
  ``run.log`` would drop rows once W&B's own step is ahead.
- MLflow: ``MlflowClient`` calls with an explicit run id keep no per-thread state (only the fluent
  API's active run is thread-local); MLflow's own async logging calls its stores from worker threads.
- CSV, and loggers this library does not know: not thread-safe (the Trainer calls CSVLogger's
  ``save()`` after every ``log_metrics``; a row added meanwhile is lost or makes ``csv.DictWriter``
  raise on the training thread), so their ``log_metrics`` and ``save`` share a lock with our writes.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MethodType
from typing import Any

from lightning_attnviz.sinks.base import EncodedPicture, Outputs, Sink
from lightning_attnviz.sinks.names import MLFLOW_IMAGE_KEY, Names, file_path, mlflow_name, wandb_name
from lightning_attnviz.util import lightning as lit

# -- sinks --------------------------------------------------------------------------------------------


def _image(png: bytes) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()  # Pillow decodes with the GIL released
    return image


def _caption(p: EncodedPicture, step: int) -> str:
    where = f"sample {p.sample}" + (f", {p.layer}" if p.layer else "")
    return f"{p.kind}: {where}, step {step}"


def _markdown_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """The header and rows of a markdown table (the module table), or ``None``."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.strip().startswith("|")
    ]
    rows = [r for r in rows if not all(re.fullmatch(r":?-+:?", c) for c in r)]
    return (rows[0], rows[1:]) if rows else None


class _Guard:
    """The lock that a logger's methods and our writes share, and how many sinks use it."""

    def __init__(self) -> None:
        self.lock, self.users = threading.RLock(), 0


class _Serialised:
    """One method of one logger, called under the guard's lock; picklable (as the plain method,
    without the lock) so that a logger stays copyable."""

    def __init__(self, method: MethodType, guard: _Guard) -> None:
        self.method, self.guard = method, guard

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.guard.lock:
            return self.method(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return (getattr, (self.method.__self__, self.method.__name__))


_METHODS = ("log_metrics", "save")


def _serialise(obj: Any) -> threading.RLock:
    """From now on ``obj.log_metrics`` and ``obj.save`` take one lock, per instance, until the last
    sink using it calls :func:`_release`; the lock is returned for our own writes."""
    current = obj.__dict__.get("log_metrics")
    if isinstance(current, _Serialised):
        guard = current.guard
    else:
        guard = _Guard()
        for name in _METHODS:
            if callable(getattr(obj, name, None)):
                setattr(obj, name, _Serialised(getattr(obj, name), guard))
    guard.users += 1
    return guard.lock


def _release(obj: Any) -> None:
    current = obj.__dict__.get("log_metrics")
    if not isinstance(current, _Serialised):
        return
    current.guard.users -= 1
    if current.guard.users <= 0:
        for name in _METHODS:
            if isinstance(obj.__dict__.get(name), _Serialised):
                delattr(obj, name)


class WandbSink:
    """Pictures as ``wandb.Image`` with captions, the scalars, histograms and the module table as a
    ``wandb.Table``: one row per capture, at ``trainer/global_step`` = the capture's step."""

    def __init__(self, logger: Any) -> None:
        self.logger, self.names = logger, Names(wandb_name)

    def write(self, out: Outputs) -> None:
        import numpy as np
        import wandb

        row: dict[str, Any] = {self.names(t): v for t, v in out.scalars.items()}
        for p in out.pictures:
            row[self.names(p.tag)] = wandb.Image(_image(p.png), caption=_caption(p, out.step))
        for tag, values in out.histograms.items():
            row[self.names(tag)] = wandb.Histogram(np_histogram=np.histogram(values, bins=64))
        for tag, text in out.text.items():
            table = _markdown_table(text)
            if table is not None:
                row[self.names(tag)] = wandb.Table(columns=[*table[0]], data=table[1])
        if row:
            self.logger.log_metrics(row, step=out.step)

    def close(self) -> None:
        pass


class MLflowSink:
    """Pictures as the run's step-indexed images (``MlflowClient.log_image(key=, step=)``), the
    scalars as metrics, the module table as ``attention/modules/step_<step>.md``."""

    def __init__(self, logger: Any) -> None:
        self.logger, self.names = logger, Names(mlflow_name)
        self.keys = Names(lambda tag: mlflow_name(tag, MLFLOW_IMAGE_KEY))
        self.files = Names(file_path)

    def write(self, out: Outputs) -> None:
        client, run_id = self.logger.experiment, self.logger.run_id
        for p in out.pictures:  # synchronous: written before the capture counts as done
            client.log_image(run_id, _image(p.png), key=self.keys(p.tag), step=out.step, synchronous=True)
        if out.scalars:
            self.logger.log_metrics({self.names(t): v for t, v in out.scalars.items()}, step=out.step)
        for tag, text in out.text.items():
            client.log_text(run_id, text, f"{self.files(tag)}/step_{out.step}.md")

    def close(self) -> None:
        pass


class CSVSink:
    """The scalars as rows of ``metrics.csv``, with the step and epoch of the validation metrics they
    were captured beside (Lightning's CSV logger writes a row per call, so they share those values,
    not the row); the pictures (which a CSV cannot hold) as PNG files
    ``<log_dir>/attention/step_<step>/sample_<i>/<layer>/<kind>.png``, the module table as ``.md``."""

    def __init__(self, logger: Any) -> None:
        self.logger, self.files = logger, Names(file_path)
        self.log_dir = Path(logger.log_dir)
        self.writer = logger.experiment  # made now: a CSV writer made later would empty our folder
        self.lock = _serialise(self.writer)

    def write(self, out: Outputs) -> None:
        for p in out.pictures:
            self._file(p.tag, out.step, ".png", p.png)
        for tag, text in out.text.items():
            self._file(tag, out.step, ".md", text.encode())
        if out.scalars:
            epoch = {} if out.epoch is None else {"epoch": out.epoch}  # as Lightning's own rows have it
            with self.lock:
                self.logger.log_metrics({**out.scalars, **epoch}, step=out.step)

    def _file(self, tag: str, step: int, suffix: str, data: bytes) -> None:
        root, _, rest = self.files(tag).partition("/")
        path = self.log_dir / root / f"step_{step}" / f"{rest or root}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)  # a reader never sees half a picture

    def close(self) -> None:
        _release(self.writer)


class MetricsSink:
    """Any other logger: the scalars through ``log_metrics`` (under the logger's lock, see above)."""

    def __init__(self, logger: Any) -> None:
        self.logger, self.lock = logger, _serialise(logger)

    def write(self, out: Outputs) -> None:
        if out.scalars:
            with self.lock:
                self.logger.log_metrics(dict(out.scalars), step=out.step)

    def close(self) -> None:
        _release(self.logger)


def _board(logger: Any) -> Sink:
    """A second (third, …) TensorBoardLogger gets everything too, written here."""
    from lightning_attnviz.sinks.tensorboard import TensorBoardSink

    return TensorBoardSink(logger.log_dir)


def _run_dir(logger: Any, fallback: str) -> str:
    """A run's own folder for a logger without a local one (W&B, MLflow): where Lightning's
    ModelCheckpoint puts that run's checkpoints, ``<save_dir>/<name>/<version>``."""
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return os.path.join(logger.save_dir or fallback, str(logger.name), version)


# -- the plan for one fit -----------------------------------------------------------------------------

_SINKS: dict[str, Callable[[Any], Sink]] = {
    "tensorboard": _board,
    "wandb": WandbSink,
    "mlflow": MLflowSink,
    "csv": CSVSink,
    "other": MetricsSink,
}


class LoggerSinks:
    """Which logger of ``trainer.loggers`` gets what in one fit.

    :meth:`plan` decides, without touching any logger, alike on every rank (a sharded capture forward
    needs every rank to agree on capturing). :meth:`open` (rank 0 only) builds the sinks.

    Args:
        loggers: ``trainer.loggers``.
        stats: whether the monitor logs scalars (a logger that takes only scalars gets nothing without).
        fallback_dir: the Trainer's ``default_root_dir``, for saved captures when no logger has a folder.
    """

    def __init__(self, loggers: Sequence[Any], stats: bool, fallback_dir: str) -> None:
        self.loggers = [(lg, lit.logger_kind(lg)) for lg in loggers]
        takes_something = [(lg, kind) for lg, kind in self.loggers if kind != "other" or stats]
        self.warnings = [
            f"AttentionMonitor: {type(lg).__name__} takes only scalars (through `log_metrics`) and "
            "`stats=False` logs none, so it gets nothing from this monitor."
            for lg, kind in self.loggers
            if (lg, kind) not in takes_something
        ]
        self.problem: str | None = None
        if not takes_something:
            names = ", ".join(type(lg).__name__ for lg, _ in self.loggers)
            self.problem = f"AttentionMonitor: no logger of this Trainer ({names}) can take what it logs."
        self._active = takes_something
        self._fallback_dir = str(fallback_dir)
        self.tensorboard_dir: str | None = None
        self.captures_dir: str | None = None
        self.sinks: list[tuple[str, Sink]] = []  # (the logger's class name, its sink)
        self._failed: set[str] = set()

    @classmethod
    def plan(cls, trainer: Any, stats: bool) -> LoggerSinks:
        return cls(trainer.loggers, stats, trainer.default_root_dir)

    def open(self) -> None:
        """Build the sinks (rank 0 only): the first TensorBoardLogger's folder for the drawing process,
        the others here. W&B and MLflow runs start now, on the training thread, not on ours."""
        boards = [lg for lg, kind in self._active if kind == "tensorboard"]
        local = [lg.log_dir for lg, kind in self._active if kind == "csv"]
        self.tensorboard_dir = str(boards[0].log_dir) if boards else None
        run_dir = _run_dir(self._active[0][0], self._fallback_dir) if self._active else self._fallback_dir
        self.captures_dir = self.tensorboard_dir or (str(local[0]) if local else run_dir)
        for lg, kind in self._active:
            if kind in ("wandb", "mlflow"):
                _ = lg.experiment, getattr(lg, "run_id", None)
        self.sinks = [
            (type(lg).__name__, _SINKS[kind](lg))
            for lg, kind in self._active
            if not (boards and lg is boards[0])
        ]

    @property
    def on_outputs(self) -> Callable[[Outputs], None] | None:
        """What :class:`~lightning_attnviz.pipeline.client.Drawing` calls with each capture's outputs."""
        return self.write if self.sinks else None

    def write(self, out: Outputs) -> None:
        """Every logger gets the capture even when one fails; the first failure of each is raised
        afterwards (the worker turns it into a warning on the training thread)."""
        failures = []
        for name, sink in self.sinks:
            try:
                sink.write(out)
            except Exception as err:  # one logger failing must not cost the others their capture
                if name not in self._failed:
                    self._failed.add(name)
                    failures.append(f"{name}: {type(err).__name__}: {err}")
        if failures:
            raise RuntimeError(f"writing to a logger failed ({'; '.join(failures)})")

    def close(self) -> None:
        """Give the loggers back as they were (see :func:`_serialise`); safe to call twice."""
        for _, sink in self.sinks:
            sink.close()
        self.sinks = []
