"""AttentionMonitor: schedules captures and hands them to the drawing pipeline. Nothing else."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

from lightning_attnviz import _lightning as lit
from lightning_attnviz.config import MonitorConfig, default_plots
from lightning_attnviz.discover import AttentionSite, ModuleSelector, find_attention
from lightning_attnviz.fixed import capture_forward, describe, first_val_batch, module_rows
from lightning_attnviz.pipeline import Job, Setup, job_from_state, job_state
from lightning_attnviz.samples import (
    Tokens,
    batch_rows,
    default_forward,
    first_rows,
    token_labeller,
)
from lightning_attnviz.tags import Tags
from lightning_attnviz.vision import PatchGrid, find_grid
from lightning_attnviz.worker import Channel, Worker, shared_worker

_DRAIN_SECONDS = 120.0  # the longest a fit's end waits for its pictures
_MAX_IN_FLIGHT = 8  # captures taken and not yet drawn; beyond this, captures are skipped


class AttentionMonitor(*lit.CALLBACKS):  # type: ignore[misc]
    r"""Capture the attention of a few fixed samples during training and draw it in TensorBoard.

    At every ``every_n_epochs``-th validation run (and every ``every_n_steps`` training steps, if set)
    the model runs once more, in eval mode under ``no_grad``, on the same fixed samples (the first
    rows of the first validation batch), with :func:`~lightning_attnviz.capture_attention` active.
    The batches you train on never see the capture; modes and random streams are restored, so a fit
    ends with bit-identical weights with or without this callback. The weights, statistics and
    pictures are made in a low-priority background process; when captures come faster than they can
    be drawn, captures are skipped (with one warning), never queued without bound.

    Args:
        every_n_epochs: capture at every n-th validation run; 0 turns epoch captures off.
        every_n_steps: also capture every n training steps (``None``: never).
        samples: how many fixed samples to keep.
        sample_input: the inputs to capture on, as your ``forward_fn`` takes them.
        forward_fn: ``(pl_module, inputs) -> Any``; default ``pl_module(x)``, ``pl_module(batch[0])``
            for a tuple/list, ``pl_module(**batch)`` for a dict.
        modules: which attention modules to watch (names, globs, or a predicate); ``None`` finds them.
        layers: which captured layers to draw: indices into the capture order or names/globs.
        heads: heads that also get a heatmap of their own.
        tokens: a tokenizer (``convert_ids_to_tokens``), a vocabulary (list or dict), or ``ids -> labels``.
        plots: ``"heatmap"``, ``"heads"``, ``"arrows"``, ``"atlas"``, ``"evolution"``, and for images
            ``"overlay"``, ``"overlay_heads"``, ``"rollout"``. ``None``: heatmap, heads, atlas and
            evolution for text; overlay, rollout, atlas and evolution for images.
        max_tokens: pictures of longer sequences are block-pooled to this many rows/columns.
        store_tokens: maps longer than this are pooled while they are computed (bounded memory).
        top_k: keys per query in the arrow view.
        log_sanity_check: also capture during the sanity check.
        strip_length: how many past captures the evolution strip shows.
        stats: log per-layer scalars (entropy, normalised entropy, distance, sink share, max weight,
            drift); ``head_stats`` adds a series per head.
        histograms: log a histogram of each layer's weights.
        save_captures: save each capture to ``<log_dir>/attention_captures/`` (see the CLI).
        sink_tokens: leading keys that count as the attention sink (default 1, or a ViT's prefix tokens).
        entropy_collapse: warn once per layer whose mean normalised entropy falls below this.
        uniform_entropy: warn once per head whose normalised entropy stays above this for 3 captures.
        image_grid: ``"auto"`` finds a timm/Hugging Face ViT's patch grid; a :class:`PatchGrid`; ``None``.
        image_mean, image_std: the images' normalisation, undone before drawing them.
        rollout_fusion, rollout_discard: how attention rollout fuses heads and what it discards.
        dashboard: write the maps for TensorBoard's Attention tab, pooled to ``dashboard_tokens``.
        name: a namespace for the tags, files and checkpoint state, needed when one Trainer has two monitors.

    Raises:
        TypeError: an argument has the wrong type. ValueError: an argument is out of range.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        samples: int = 2,
        sample_input: Any = None,
        forward_fn: Callable[[Any, Any], Any] | None = None,
        modules: ModuleSelector = None,
        layers: Sequence[int | str] | None = None,
        heads: Sequence[int] = (),
        tokens: Tokens = None,
        plots: Sequence[str] | None = None,
        max_tokens: int = 64,
        store_tokens: int = 512,
        top_k: int = 3,
        log_sanity_check: bool = False,
        strip_length: int = 8,
        stats: bool = True,
        head_stats: bool = False,
        histograms: bool = True,
        save_captures: bool = True,
        sink_tokens: int | None = None,
        entropy_collapse: float = 0.02,
        uniform_entropy: float = 0.99,
        image_grid: PatchGrid | Literal["auto"] | None = "auto",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        rollout_fusion: Literal["mean", "max", "min"] = "mean",
        rollout_discard: float = 0.0,
        dashboard: bool = True,
        dashboard_tokens: int = 128,
        name: str | None = None,
    ) -> None:
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.config = MonitorConfig.build(**args)
        self._label = token_labeller(tokens)
        self._forward = forward_fn or default_forward
        self._fixed: Any = self.config.sample_input
        self._train_fixed: Any = None
        self._val_runs = 0
        self._restored: dict[str, Any] = {}
        self._seconds_per_capture: list[float] = []
        self._reset()

    def _reset(self) -> None:
        """Everything that belongs to one fit (a monitor can serve several)."""
        self._enabled = False
        self._sites: list[AttentionSite] = []
        self._setup: Setup | None = None
        self._worker: Worker | None = None
        self._channel: Channel | None = None
        self._everywhere = False
        self._last_step: int | None = None
        self._modules_due = True
        self._labels: tuple | None = None
        self._images: tuple = ()
        self._validated = False
        self._skipped = 0
        self._warned: set[str] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(id=self.config.state_id)

    # -- setup --------------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close(wait=False)
        self._reset()
        self._fixed, self._train_fixed, self._val_runs, self._restored = self.config.sample_input, None, 0, {}
        same = [
            cb
            for cb in trainer.callbacks
            if isinstance(cb, AttentionMonitor) and cb.config.name == self.config.name
        ]
        if len(same) > 1:
            raise ValueError(
                "`name`: this Trainer has several AttentionMonitors with name="
                f"{self.config.name!r}; their tags and files would overwrite each other. "
                "Give each a distinct `name=`."
            )
        if getattr(trainer, "fast_dev_run", False):
            return self._warn(
                "AttentionMonitor: nothing is logged under `fast_dev_run` (Lightning replaces the "
                "loggers with a dummy one), so no attention is captured."
            )
        boards = [lg for lg in trainer.loggers if lit.is_tensorboard(lg)]
        if not boards:
            return self._warn(
                "AttentionMonitor found no TensorBoardLogger in `trainer.loggers` and will draw "
                "nothing. Add one: `Trainer(logger=TensorBoardLogger('logs'))`."
            )
        try:
            self._sites = find_attention(pl_module, self.config.modules)
        except ValueError as err:
            return self._warn(f"AttentionMonitor: {err}. Nothing will be captured.")
        if not self._sites:
            return self._warn(
                f"AttentionMonitor found no attention modules in {type(pl_module).__name__}: it "
                "looks for nn.MultiheadAttention and classes named *Attention*/*Attn*. Pass "
                "`modules=` with their names or a predicate."
            )
        grid = find_grid(pl_module) if self.config.image_grid == "auto" else self.config.image_grid
        self._everywhere = lit.capture_on_every_rank(trainer.strategy, trainer.world_size)
        self._enabled = True
        if trainer.is_global_zero:
            config = replace(self.config, sample_input=None, forward_fn=None, tokens=None, modules=None)
            self._setup = Setup(
                config,
                default_plots(self.config, grid is not None),
                grid,
                Tags(self.config.name),
                str(boards[0].log_dir) if self.config.save_captures else None,
            )
            self._board_dir = str(boards[0].log_dir)
            self._open()

    def _open(self) -> None:
        """Open this monitor's pipeline in the drawing worker (again, after a restore or a death)."""
        worker, old = shared_worker(), self._channel
        if self._worker is not worker or old is None:
            self._channel = worker.channel()
            if old is not None:  # what the dead worker had to say is still said
                self._channel.messages.extend(old.messages)
        self._worker, ch = worker, self._channel
        worker.post(ch, ("open", ch.id, self._setup, self._restored.get("pipeline"), self._board_dir))
        for job in self._restored.get("replay", ()):
            worker.post(ch, ("replay", ch.id, 0, job if isinstance(job, Job) else job_from_state(job)))

    # -- when ---------------------------------------------------------------------------------------

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._fixed is None and self._enabled:
            self._take(batch)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._train_fixed is None and self._enabled:
            self._train_fixed = first_rows(batch, self.config.samples)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            if self.config.log_sanity_check:
                self._capture(trainer, pl_module)
            return
        self._validated = True
        self._val_runs += 1
        if self.config.every_n_epochs and self._val_runs % self.config.every_n_epochs == 0:
            self._capture(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Validation was due but ran no batch: capture on a training batch rather than log nothing."""
        validated, self._validated = self._validated, False
        every = trainer.check_val_every_n_epoch
        due = bool(every) and (trainer.current_epoch + 1) % every == 0
        if validated or not due or sum(trainer.num_val_batches) > 0 or not self.config.every_n_epochs:
            return
        self._warn_once(
            "no_val",
            f"AttentionMonitor: no validation batch ran in epoch {trainer.current_epoch} (no "
            "val dataloader, `limit_val_batches=0` or an empty loader). It captures on the first "
            "training batch at epoch ends instead; add a val_dataloader or pass `sample_input=`.",
        )
        self._val_runs += 1
        if self._val_runs % self.config.every_n_epochs == 0:
            self._capture(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.config.every_n_steps
        if every and trainer.global_step % every == 0:
            self._capture(trainer, pl_module)
        elif self._channel is not None and self._channel.messages:
            self._raise_messages()

    # -- what ---------------------------------------------------------------------------------------

    def _capture(self, trainer: Any, pl_module: Any) -> None:
        if not self._enabled or (not trainer.is_global_zero and not self._everywhere):
            return
        step = trainer.global_step
        if step == self._last_step:
            return  # a step capture and a validation capture at the same step: log once
        if self._fixed is None:
            self._take(first_val_batch(trainer))
        fixed = self._fixed if self._fixed is not None else self._train_fixed
        if fixed is None:
            return
        if trainer.is_global_zero and not self._ready():
            return
        try:
            cap = capture_forward(trainer, pl_module, fixed, self._forward, self.config, self._sites)
        except Exception as err:  # the user's training goes on; the capture is reported, not raised
            cap = None
            self._warn_once(
                "forward",
                f"AttentionMonitor: the capture forward failed ({type(err).__name__}: {err}); "
                "no attention is drawn for it. Check `forward_fn` / `sample_input` against your model.",
            )
        self._last_step = step
        if cap is None or not trainer.is_global_zero or self._channel is None:
            return  # a rank that only takes part in a sharded forward: rank 0 draws
        if self._labels is None:
            self._labels, self._images = describe(
                fixed, self._label, self._setup.grid, self.config, self._warn
            )
        modules = module_rows(self._sites, cap) if self._modules_due else ()
        self._modules_due = False
        job = Job(
            step,
            trainer.current_epoch,
            tuple(cap.pending),
            self._labels,
            self._images,
            not trainer.sanity_checking,
            modules,
        )
        self._worker.post(self._channel, ("job", self._channel.id, step, job, False))  # type: ignore[union-attr]
        self._raise_messages()

    def _ready(self) -> bool:
        """Back-pressure: at most ``_MAX_IN_FLIGHT`` captures wait for drawing (memory stays bounded and
        training never waits); a later one is skipped, and the user is told once."""
        worker = self._worker
        if worker is None or not worker.alive():
            self._open()  # the drawing process died: its replacement starts over
        ch = self._channel
        if ch is not None and ch.in_flight >= _MAX_IN_FLIGHT:
            self._skipped += 1
            per = sum(ch.seconds) / len(ch.seconds) if ch.seconds else float("nan")
            self._warn_once(
                "skip",
                f"AttentionMonitor: captures arrive faster than they can be drawn (about {per:.2g} "
                "CPU seconds each, at low priority); captures are skipped until drawing catches up. Fewer "
                "captures (`every_n_steps`), `plots`, `layers` or `samples` make each one cheaper.",
            )
            return False
        return True

    def _take(self, batch: Any) -> None:
        if batch is None:
            return
        self._fixed = first_rows(batch, self.config.samples)
        rows = batch_rows(self._fixed)
        if 0 < rows < self.config.samples:
            self._warn(
                f"AttentionMonitor: the first validation batch has only {rows} row(s), fewer than "
                f"samples={self.config.samples}; pictures are drawn for {rows}. "
                "Pass `sample_input=` to choose."
            )

    # -- messages, state, cleanup -------------------------------------------------------------------

    def _warn(self, message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warn(message)

    def _raise_messages(self) -> None:
        ch = self._channel
        while ch is not None and ch.messages:
            self._warn(ch.messages.pop(0))

    def state_dict(self) -> dict[str, Any]:
        """The fixed samples, counters and the pipeline's bounded history, so a resumed fit continues."""
        replay = [job_state(j) if isinstance(j, Job) else j for j in self._restored.get("replay", ())]
        state = {
            "samples": self.config.samples,
            "fixed": self._fixed,
            "train_fixed": self._train_fixed,
            "val_runs": self._val_runs,
            "pipeline": self._restored.get("pipeline"),
            "replay": replay,
        }
        ch = self._channel
        if ch is not None:  # never waits: the last drawn state, plus the captures still drawing
            with ch.done:
                state["pipeline"], state["replay"] = ch.state, [job_state(j) for j in ch.jobs.values()]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_runs = state_dict.get("val_runs", 0)
        self._train_fixed = state_dict.get("train_fixed")
        saved = state_dict.get("samples", self.config.samples)
        if self.config.sample_input is None:
            self._fixed = state_dict.get("fixed")
            if saved != self.config.samples and self._fixed is not None:
                self._warn(
                    f"AttentionMonitor: the checkpoint's fixed samples were taken with samples={saved}; this "
                    f"monitor has samples={self.config.samples}, so they are taken again and the evolution "
                    "strips start over."
                )
                self._fixed, self._train_fixed, state_dict = None, None, {}
        replay = [job_from_state(j) for j in state_dict.get("replay", [])]
        self._restored = {"pipeline": state_dict.get("pipeline"), "replay": replay}
        if self._worker is not None and self._setup is not None:
            self._open()  # restored after setup: the pipeline starts from the checkpoint's history

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close(wait=True)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close(wait=True)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Everything captured is drawn and written before this returns; safe to call twice."""
        self._close(wait=True)

    def _close(self, wait: bool) -> None:
        worker, ch = self._worker, self._channel
        if worker is None or ch is None:
            return
        if wait and not worker.wait(ch, _DRAIN_SECONDS):
            self._warn(
                f"AttentionMonitor: {ch.in_flight} capture(s) were still drawing after "
                f"{_DRAIN_SECONDS:.0f} s "
                "and are lost."
            )
        with ch.done:
            self._restored = {"pipeline": ch.state, "replay": [job_state(j) for j in ch.jobs.values()]}
            self._seconds_per_capture = list(ch.seconds)  # the drawing process's CPU time (benchmarks)
        worker.request(ch, "close", _DRAIN_SECONDS)
        self._raise_messages()
        worker.forget(ch)
        self._worker = self._channel = None
