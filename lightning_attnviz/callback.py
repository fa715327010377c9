"""AttentionMonitor: the Lightning callback that wires discover → capture → reduce → render → log."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import apply_to_collection, move_data_to_device
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from lightning_attnviz import log
from lightning_attnviz.capture import AttentionCapture, AttentionMap
from lightning_attnviz.discover import ModuleSelector, find_attention
from lightning_attnviz.reduce import make_views
from lightning_attnviz.render import PLOT_KINDS, render_views

ForwardFn = Callable[[LightningModule, Any], Any]
Tokens = None | Sequence[str] | Mapping[int, str] | Callable[[list[int]], Sequence[str]] | Any


class AttentionMonitor(Callback):
    r"""Capture the attention of a few fixed samples during training and draw it in TensorBoard.

    At every ``every_n_epochs``-th validation run (and every ``every_n_steps`` training steps, if set)
    the model runs once more, in eval mode under ``no_grad``, on the same fixed samples, with
    :func:`~lightning_attnviz.capture_attention` active. The batches you train and validate on never
    see the capture, the model's train/eval state and the random number streams are restored, so a
    fit ends with bit-identical weights with or without this callback.

    Args:
        every_n_epochs: capture at every n-th validation run (an epoch, or each ``val_check_interval``);
            0 turns epoch captures off.
        every_n_steps: also capture every n training steps (``None``: never).
        samples: how many fixed samples to keep from the first validation batch (or ``sample_input``).
        sample_input: the inputs to capture on, as your ``forward_fn`` takes them; default: the
            first ``samples`` rows of the first validation batch.
        forward_fn: ``(pl_module, inputs) -> Any`` runs the model. Default: ``pl_module(x)`` for a
            tensor, ``pl_module(batch[0])`` for a tuple/list batch, ``pl_module(**batch)`` for a dict.
        modules: which attention modules to watch (names, globs, or a predicate); ``None`` finds them.
        layers: which captured layers to draw: indices into the capture order or names/globs.
        heads: heads that also get a heatmap of their own (every head is always in the grid).
        tokens: how to label token ids: a tokenizer (``convert_ids_to_tokens``), a vocabulary
            (list or dict id → str), or a function ``ids -> labels``; ``None``: positions.
        plots: which pictures: ``"heatmap"``, ``"heads"``, ``"arrows"``, ``"atlas"``.
        max_tokens: longer sequences are block-pooled to this many rows/columns (noted on the image).
        top_k: keys per query in the arrow view.
        log_sanity_check: also capture during the sanity check.

    Raises:
        ValueError: an argument is out of range; the message names it and what is allowed.
        TypeError: an argument has the wrong type.

    Example::

        trainer = Trainer(logger=TensorBoardLogger("logs"), callbacks=[AttentionMonitor(tokens=vocab)])
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        samples: int = 2,
        sample_input: Any = None,
        forward_fn: ForwardFn | None = None,
        modules: ModuleSelector = None,
        layers: Sequence[int | str] | None = None,
        heads: Sequence[int] = (),
        tokens: Tokens = None,
        plots: Sequence[str] = PLOT_KINDS,
        max_tokens: int = 64,
        top_k: int = 3,
        log_sanity_check: bool = False,
    ) -> None:
        _check_int("every_n_epochs", every_n_epochs, minimum=0)
        if every_n_steps is not None:
            _check_int("every_n_steps", every_n_steps, minimum=1)
        _check_int("samples", samples, minimum=1)
        _check_int("max_tokens", max_tokens, minimum=2)
        _check_int("top_k", top_k, minimum=1)
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"`forward_fn` must be a callable (pl_module, inputs) -> Any, got {forward_fn!r}")
        if isinstance(plots, str) or not all(p in PLOT_KINDS for p in plots):
            raise ValueError(f"`plots` must be a list drawn from {list(PLOT_KINDS)}, got {plots!r}")
        if isinstance(heads, (str, int)) or not all(isinstance(h, int) and h >= 0 for h in heads):
            raise ValueError(f"`heads` must be a list of head indices >= 0, got {heads!r}")
        if layers is not None and (
            isinstance(layers, (str, int)) or not all(isinstance(x, (int, str)) for x in layers)
        ):
            raise ValueError(f"`layers` must be a list of layer indices or names/globs, got {layers!r}")
        if modules is not None and not (callable(modules) or isinstance(modules, (str, Sequence))):
            raise TypeError(f"`modules` must be None, names/globs or a predicate, got {modules!r}")
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.samples = samples
        self.forward_fn = forward_fn or default_forward
        self.modules = modules
        self.layers = None if layers is None else list(layers)
        self.heads = list(heads)
        self.label_tokens = _token_labeller(tokens)
        self.plots = tuple(plots)
        self.max_tokens = max_tokens
        self.top_k = top_k
        self.log_sanity_check = log_sanity_check

        self._fixed: Any = None if sample_input is None else _first_rows(sample_input, samples)
        self._train_fixed: Any = None  # fallback samples when no validation batch ever runs
        self._writer: Any = None
        self._worker: log.BackgroundWriter | None = None
        self._enabled = True
        self._val_runs = 0
        self._validated_this_epoch = False
        self._warned_no_val = False
        self._last_step: int | None = None
        self._modules_logged = False

    # -- setup ------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        self._enabled = True
        if not loggers:
            rank_zero_warn(
                "AttentionMonitor found no TensorBoardLogger in `trainer.loggers` and will draw nothing. "
                "Add one: `Trainer(logger=TensorBoardLogger('logs'))`.",
                category=RuntimeWarning,
            )
            self._enabled = False
            return
        if trainer.is_global_zero:
            self._writer = loggers[0].experiment
            self._worker = self._worker or log.BackgroundWriter()
        try:
            sites = find_attention(pl_module, self.modules)
        except ValueError as err:
            rank_zero_warn(f"AttentionMonitor: {err}. Nothing will be captured.", category=RuntimeWarning)
            self._enabled = False
            return
        if not sites:
            rank_zero_warn(
                f"AttentionMonitor found no attention modules in {type(pl_module).__name__}: it looks for "
                "nn.MultiheadAttention and modules whose class name contains 'Attention' or 'Attn'. "
                "Pass `modules=` with their names or a predicate.",
                category=RuntimeWarning,
            )
            self._enabled = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_runs = 0
        self._validated_this_epoch = False
        self._warned_no_val = False
        self._last_step = None
        self._modules_logged = False

    # -- when -------------------------------------------------------------------------------------

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._fixed is None and self._enabled:
            self._fixed = _first_rows(batch, self.samples)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._train_fixed is None and self._enabled:
            self._train_fixed = _first_rows(batch, self.samples)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            if self.log_sanity_check:
                self._capture(trainer, pl_module)
            return
        self._validated_this_epoch = True
        self._val_runs += 1
        if self.every_n_epochs and self._val_runs % self.every_n_epochs == 0:
            self._capture(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Validation was due but ran no batch (no loader, ``limit_val_batches=0``, empty loader):
        capture on the first training batch instead of leaving the log silently empty."""
        validated, self._validated_this_epoch = self._validated_this_epoch, False
        every = trainer.check_val_every_n_epoch
        due = bool(every) and (trainer.current_epoch + 1) % every == 0
        if validated or not due or sum(trainer.num_val_batches) > 0 or not self.every_n_epochs:
            return
        if not self._warned_no_val:
            rank_zero_warn(
                f"AttentionMonitor: no validation batch ran in epoch {trainer.current_epoch} (no val "
                "dataloader, `limit_val_batches=0` or an empty loader). It captures on the first training "
                "batch at epoch ends instead; add a val_dataloader or pass `sample_input=` to choose.",
                category=RuntimeWarning,
            )
            self._warned_no_val = True
        self._val_runs += 1
        if self._val_runs % self.every_n_epochs == 0:
            self._capture(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._capture(trainer, pl_module)

    # -- what -------------------------------------------------------------------------------------

    def _capture(self, trainer: Trainer, pl_module: LightningModule) -> None:
        worker = self._worker
        if not self._enabled or not trainer.is_global_zero or worker is None:
            return
        step = trainer.global_step
        if self._fixed is None:
            self._fixed = self._train_fixed  # a step capture before any validation batch
        if self._fixed is None or step == self._last_step:
            return  # a step capture and a validation capture at the same step: log once
        records = self._run_capture(trainer, pl_module)
        self._last_step = step
        modules = [] if self._modules_logged else self._module_rows(pl_module, records)
        self._modules_logged = True
        selected = self._select_layers(records)

        def draw() -> None:  # on the writer thread: labels, pictures, PNG encoding, event records
            if modules:
                log.write_modules(self._writer, modules, step)
            if selected:
                views = make_views(selected, self._labels(), self.max_tokens)
                log.write_pictures(
                    self._writer, render_views(views, step, self.plots, self.heads, self.top_k), step
                )
            self._writer.flush()

        worker.submit(draw)

    # -- cleanup ----------------------------------------------------------------------------------

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._worker is not None:
            self._worker.flush()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Everything queued is written before this returns; safe to call twice."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _run_capture(self, trainer: Trainer, pl_module: LightningModule) -> list[AttentionMap]:
        """One extra forward on the fixed samples, leaving the model and RNG as they were."""
        modes = {m: m.training for m in pl_module.modules()}
        device = pl_module.device
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        precision = trainer.precision_plugin
        try:
            pl_module.eval()
            with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
                inputs = precision.convert_input(move_data_to_device(self._fixed, device))
                with (
                    AttentionCapture(pl_module, self.samples, self.modules) as cap,
                    precision.forward_context(),
                ):
                    self.forward_fn(pl_module, inputs)
        finally:
            for module, training in modes.items():
                module.training = training
        return list(cap.records.values())

    def _select_layers(self, records: list[AttentionMap]) -> list[AttentionMap]:
        if self.layers is None:
            return records
        chosen = []
        for i, record in enumerate(records):
            for sel in self.layers:
                if (isinstance(sel, int) and sel in (i, i - len(records))) or (
                    isinstance(sel, str) and fnmatch.fnmatchcase(record.key, sel)
                ):
                    chosen.append(record)
                    break
        if not chosen:
            rank_zero_warn(
                f"AttentionMonitor: `layers={self.layers}` matches none of the captured layers "
                f"{[r.key for r in records]}.",
                category=RuntimeWarning,
            )
        return chosen

    def _labels(self) -> list[list[str] | None]:
        ids = _token_ids(self._fixed)
        if ids is None or self.label_tokens is None:
            return [None] * self.samples
        return [list(self.label_tokens(row.tolist())) for row in ids]

    def _module_rows(self, pl_module: LightningModule, records: list[AttentionMap]) -> list[tuple]:
        """name, type, heads and capture path of every attention module, for the text table."""
        paths: dict[str, set[str]] = {}
        for record in records:
            paths.setdefault(record.module, set()).add(record.path)
        rows = []
        for site in find_attention(pl_module, self.modules):
            via = ", ".join(sorted(paths.get(site.name, ()))) or "not called"
            rows.append((site.name, site.module_type, site.num_heads or "?", via))
        return rows


def default_forward(pl_module: LightningModule, inputs: Any) -> Any:
    """``pl_module(x)`` for a tensor, ``pl_module(batch[0])`` for a tuple/list, ``pl_module(**d)``
    for a dict."""
    if isinstance(inputs, Mapping):
        return pl_module(**inputs)
    if isinstance(inputs, (tuple, list)):
        return pl_module(inputs[0])
    return pl_module(inputs)


def _first_rows(batch: Any, samples: int) -> Any:
    """The first ``samples`` rows of every tensor in ``batch``, detached, cloned, on the CPU."""
    return apply_to_collection(batch, Tensor, lambda t: t[:samples].detach().to("cpu", copy=True))


def _token_ids(inputs: Any) -> Tensor | None:
    """The token ids of the fixed samples: ``input_ids`` of a dict, else the first integer tensor."""
    if isinstance(inputs, Mapping) and isinstance(inputs.get("input_ids"), Tensor):
        return inputs["input_ids"]
    found: list[Tensor] = []
    apply_to_collection(inputs, Tensor, lambda t: found.append(t) if not t.is_floating_point() else None)
    ids = [t for t in found if t.dim() == 2 and t.dtype not in (torch.bool,)]
    return ids[0] if ids else None


def _token_labeller(tokens: Tokens) -> Callable[[list[int]], Sequence[str]] | None:
    if tokens is None:
        return None
    if hasattr(tokens, "convert_ids_to_tokens"):
        return tokens.convert_ids_to_tokens
    if isinstance(tokens, Mapping):
        return lambda ids: [str(tokens.get(i, i)) for i in ids]
    if isinstance(tokens, Sequence) and not isinstance(tokens, str):
        return lambda ids: [str(tokens[i]) if 0 <= i < len(tokens) else str(i) for i in ids]
    if callable(tokens):
        return tokens
    raise TypeError(
        "`tokens` must be None, a tokenizer with convert_ids_to_tokens, a vocabulary (list or dict "
        f"id -> str) or a function ids -> labels; got {type(tokens).__name__}"
    )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
