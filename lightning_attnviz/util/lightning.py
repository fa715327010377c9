"""Both Lightning packages at once: ``pytorch_lightning`` and the unified ``lightning.pytorch``.

Each package has its own ``Callback``, loggers and strategies, and its Trainer checks callbacks
against its own classes. AttentionMonitor subclasses every ``Callback`` that is installed, and the
callback recognises loggers and strategies by the classes of every installed package.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from torch import Tensor


def _load(path: str) -> list[type]:
    """The class at ``module:Name`` in each installed Lightning package."""
    module, _, name = path.partition(":")
    found = []
    for package in ("pytorch_lightning", "lightning.pytorch"):
        try:
            found.append(getattr(importlib.import_module(f"{package}.{module}"), name))
        except (ImportError, AttributeError):
            continue
    return found


CALLBACKS: tuple[type, ...] = tuple(_load("callbacks:Callback"))
if not CALLBACKS:  # pragma: no cover - the package declares pytorch-lightning as a dependency
    raise ImportError("lightning_attnviz needs `pytorch_lightning` or `lightning` installed")
TENSORBOARD_LOGGERS: tuple[type, ...] = tuple(_load("loggers:TensorBoardLogger"))
# Importing these classes imports neither wandb nor mlflow: Lightning loads the clients lazily.
WANDB_LOGGERS: tuple[type, ...] = tuple(_load("loggers:WandbLogger"))
MLFLOW_LOGGERS: tuple[type, ...] = tuple(_load("loggers:MLFlowLogger"))
CSV_LOGGERS: tuple[type, ...] = tuple(_load("loggers:CSVLogger"))
LoggerKind = Literal["tensorboard", "wandb", "mlflow", "csv", "other"]
# Strategies that split the model across ranks: every rank must run the capture forward together.
SHARDED: tuple[type, ...] = tuple(
    cls
    for name in ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")
    for cls in _load(f"strategies:{name}")
)
# Strategies that keep a whole replica on every rank: rank 0 can run the forward alone.
REPLICATED: tuple[type, ...] = tuple(_load("strategies:DDPStrategy"))


def logger_kind(logger: Any) -> LoggerKind:
    """Which sink a logger of either Lightning package gets (subclasses count as their base)."""
    for kind, classes in (
        ("tensorboard", TENSORBOARD_LOGGERS),
        ("wandb", WANDB_LOGGERS),
        ("mlflow", MLFLOW_LOGGERS),
        ("csv", CSV_LOGGERS),
    ):
        if isinstance(logger, classes):
            return kind  # type: ignore[return-value]
    return "other"


def capture_on_every_rank(strategy: Any, world_size: int) -> bool:
    """Whether the capture forward must run on every rank (decided from the strategy's type).

    A sharded model (FSDP, FSDP2/tensor parallel, DeepSpeed) gathers parameters with collectives, so a
    forward on rank 0 alone would hang the others. A replicated one (DDP) runs rank 0 alone. A strategy
    this library does not know runs everywhere: redundant work, but never a hang.
    """
    if world_size <= 1:
        return False
    if isinstance(strategy, SHARDED):
        return True
    return not isinstance(strategy, REPLICATED)


def logging_problem(trainer: Any) -> str | None:
    """Why nothing can be logged in this fit, or ``None``; decided alike on every rank (a sharded
    capture forward needs every rank to agree on capturing). Which logger gets what is
    :class:`lightning_attnviz.sinks.loggers.LoggerSinks`'s."""
    if getattr(trainer, "fast_dev_run", False):
        return (
            "AttentionMonitor: nothing is logged under `fast_dev_run` (Lightning replaces the loggers with "
            "a dummy one), so no attention is captured."
        )
    if not trainer.loggers:
        return (
            "AttentionMonitor: the Trainer has no logger (`logger=False`), so nothing is logged and no "
            "attention is captured. Add one: TensorBoardLogger gets everything; WandbLogger, MLFlowLogger "
            "and CSVLogger get the pictures and scalars."
        )
    return None


def metrics_step(trainer: Any) -> int:
    """The step Lightning logs metrics at now, so that attention lines up with them.

    ``_LoggerConnector.log_metrics`` logs at ``fit_loop.epoch_loop._batches_that_stepped``: the batches
    that stepped an optimizer *before* the current one, because validation (at an epoch's end or
    mid-epoch with ``val_check_interval``) and a batch's own training metrics are logged before the
    count moves on. So ``val_loss`` of the validation after step 32 is logged at 31, and a step
    capture after batch 20 at 19. Lightning has no public name for it (the one private attribute
    read here); without it, ``global_step``.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    step = getattr(loop, "_batches_that_stepped", None)
    return step if isinstance(step, int) else int(trainer.global_step)


def to_device(batch: Any, device: Any) -> Any:
    """Every tensor of a batch moved to ``device`` (what Lightning's ``move_data_to_device`` does)."""
    from lightning_utilities.core.apply_func import apply_to_collection

    return apply_to_collection(batch, Tensor, lambda t: t.to(device))
