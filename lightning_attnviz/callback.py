"""AttentionMonitor: schedules captures and hands them to the drawing pipeline. Nothing else."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

from lightning_attnviz.capture.discover import AttentionSite, ModuleSelector
from lightning_attnviz.capture.grid import PatchGrid, find_grid
from lightning_attnviz.capture.relevance import relevance_job
from lightning_attnviz.capture.samples import Target, Tokens, default_forward, token_labeller
from lightning_attnviz.config import build_config, setup_problems
from lightning_attnviz.fixed_samples import (
    FixedSamples,
    capture_forward,
    find_sites,
    first_val_batch,
    has_cross_attention,
    module_rows,
)
from lightning_attnviz.pipeline import spool
from lightning_attnviz.pipeline.client import DRAIN_SECONDS, INTERRUPT_SECONDS, Drawing, warn
from lightning_attnviz.pipeline.messages import Job, Setup
from lightning_attnviz.pipeline.settings import LOGIT_GROWTH, MAX_LOGIT
from lightning_attnviz.render.plots import default_plots
from lightning_attnviz.sinks.loggers import LoggerSinks
from lightning_attnviz.sinks.tags import Tags
from lightning_attnviz.util import lightning as lit
from lightning_attnviz.util.once import Once


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
        target: where the decoder's input tokens are in a batch, for an encoder–decoder model fed a
            tuple or your own dict (``forward_fn=lambda m, b: m(b[0], b[1])``): an index into a tuple or
            list batch, a key of a dict batch, or ``(batch) -> ids`` (a ``(batch, T)`` integer tensor,
            called on the fixed samples). ``None``: ``decoder_input_ids`` / ``labels`` of a dict batch,
            else the decoder's axes show positions; they never carry the source's tokens.
        plots: ``"heatmap"``, ``"heads"``, ``"arrows"``, ``"atlas"``, ``"evolution"``, and for images
            ``"overlay"``, ``"overlay_heads"``, ``"rollout"``. ``None``: heatmap, heads, atlas and
            evolution for text; overlay, rollout, atlas and evolution for images.
        max_tokens: pictures of longer maps are pooled to this many rows/columns (at most 128), by
            the one rule every pooling follows: prefix (CLS, registers) and sink tokens never pooled,
            image patches in 2×2 (or larger) squares, other tokens in contiguous blocks; said in the
            picture's note. The stored maps are not pooled by it.
        store_tokens: maps longer than this are pooled while they are computed (bounded memory), by
            the same rule; shorter ones are stored whole, in the capture files and the tab.
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
        dashboard: write the maps for TensorBoard's Attention tab, whole up to ``dashboard_tokens``
            (pooled by the same rule beyond).
        name: a namespace for the tags, files and checkpoint state, needed when one Trainer has two monitors.
        health: log ``attention_health/*``: each layer's largest logit, the fidelity of its maps to the
            kernel's output, the value-weighted sink share (see :mod:`lightning_attnviz.capture.probe`).
        max_logit, logit_growth: warn once per layer whose largest logit passes ``max_logit`` (default:
            Kimi K2's QK-Clip cap, 100; again at 1e3 and 1e4, Wortsman et al. 2023), or grows
            ``logit_growth`` times over its first capture to above ``max_logit / 2``.
        relevance: also run a separate forward and backward at each capture for gradient-weighted
            relevance (Chefer et al. 2021; see :mod:`lightning_attnviz.capture.relevance`), drawn per sample.
        relevance_target: ``(output) -> Tensor`` to explain; default the predicted class or next token.

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
        max_tokens: int = 128,
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
        dashboard_tokens: int = 512,
        name: str | None = None,
        health: bool = True,
        max_logit: float = MAX_LOGIT,
        logit_growth: float = LOGIT_GROWTH,
        relevance: bool = False,
        relevance_target: Callable[[Any], Any] | None = None,
        target: Target = None,
    ) -> None:
        args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.config = build_config(**args)
        self._label = token_labeller(tokens)
        self._forward = forward_fn or default_forward
        self._samples = FixedSamples(self.config)
        self._val_runs = 0
        self._restored: dict[str, Any] = {}
        self._seconds_per_capture: list[float] = []  # the drawing process's CPU time (benchmarks)
        self._drawing: Drawing | None = None
        self._sinks: LoggerSinks | None = None
        self._said_stages = False
        self._reset()

    def _reset(self) -> None:
        """Everything that belongs to one fit (a monitor can serve several)."""
        self._enabled = self._everywhere = self._validated = False
        self._sites: list[AttentionSite] = []
        self._setup: Setup | None = None
        self._last_step: int | None = None
        self._modules_due = True
        self._warned = Once()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(id=self.config.state_id)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return self._not_this_stage(stage)
        self._close(0)
        self._reset()
        self._samples.reset()
        self._val_runs, self._restored = 0, {}
        names = [cb.config.name for cb in trainer.callbacks if isinstance(cb, AttentionMonitor)]
        if names.count(self.config.name) > 1:
            raise ValueError(
                f"`name`: this Trainer has several AttentionMonitors with name={self.config.name!r}; their "
                "tags and files would overwrite each other. Give each a distinct `name=`."
            )
        self._sinks = sinks = LoggerSinks.plan(trainer, self.config.stats)
        problem = lit.logging_problem(trainer) or sinks.problem
        if problem is None:
            self._sites, problem = find_sites(pl_module, self.config.modules)
        if problem is not None:
            return warn(problem)
        grid = find_grid(pl_module) if self.config.image_grid == "auto" else self.config.image_grid
        self._everywhere = lit.capture_on_every_rank(trainer.strategy, trainer.world_size)
        self._enabled = True
        if trainer.is_global_zero:
            sinks.open()  # each logger gets what it can show; the first TensorBoardLogger everything
            for message in [*sinks.warnings, *setup_problems(self.config, self._sites, grid)]:
                warn(message)
            config = replace(self.config, sample_input=None, forward_fn=None, tokens=None, modules=None)
            config = replace(config, relevance_target=None, target=None)  # callables stay in this process
            plots = default_plots(self.config.plots, grid is not None)
            saves = sinks.captures_dir if self.config.save_captures else None
            self._setup = Setup(config, plots, grid, Tags(self.config.name), saves)
            inflight = spool.folder(sinks.captures_dir or trainer.default_root_dir)
            self._drawing = Drawing(self._setup, sinks.tensorboard_dir, sinks.on_outputs, inflight)

    def _not_this_stage(self, stage: str) -> None:
        """``validate``, ``test`` and ``predict`` log nothing (their step is the fit's last one: a capture
        would land on it and overwrite the fit's files); said once per monitor."""
        self._enabled = False
        if not self._said_stages:
            self._said_stages = True
            warn(
                f"AttentionMonitor captures during `fit` only; trainer.{stage}() logs no attention (it would "
                "land on the fit's last step). For a look at a trained model, use `capture_attention`."
            )

    # -- when ---------------------------------------------------------------------------------------

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._enabled:
            self._samples.take(batch, warn)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._enabled:
            self._samples.take_train(batch)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._enabled:
            return
        if trainer.sanity_checking:
            if self.config.log_sanity_check:
                self._capture(trainer, pl_module, validation=True)
            return
        self._validated = True
        self._val_runs += 1
        if self.config.every_n_epochs and self._val_runs % self.config.every_n_epochs == 0:
            self._capture(trainer, pl_module, validation=True)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Validation was due but ran no batch: capture on a training batch rather than log nothing."""
        validated, self._validated = self._validated, False
        every = trainer.check_val_every_n_epoch
        due = bool(every) and (trainer.current_epoch + 1) % every == 0
        if validated or not due or sum(trainer.num_val_batches) > 0 or not self.config.every_n_epochs:
            return
        self._warn_once(
            "no_val",
            f"AttentionMonitor: no validation batch ran in epoch {trainer.current_epoch} (no val dataloader, "
            "`limit_val_batches=0` or an empty loader). It captures on the first training batch at epoch "
            "ends instead; add a val_dataloader or pass `sample_input=`.",
        )
        self._val_runs += 1
        if self._val_runs % self.config.every_n_epochs == 0:
            self._capture(trainer, pl_module, validation=True)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        every = self.config.every_n_steps
        if every and trainer.global_step % every == 0:
            self._capture(trainer, pl_module, validation=False)
        elif self._drawing is not None:
            self._drawing.say()

    # -- what ---------------------------------------------------------------------------------------

    def _capture(self, trainer: Any, pl_module: Any, validation: bool) -> None:
        """Validation captures are never skipped; step captures are when drawing falls behind."""
        if not self._enabled or (not trainer.is_global_zero and not self._everywhere):
            return
        step, drawing = lit.metrics_step(trainer), self._drawing
        if step == self._last_step:
            return  # a step capture and a validation capture at the same step: log once
        if self._samples.rows is None:
            self._samples.take(first_val_batch(trainer), warn)
        fixed = self._samples.current()
        if fixed is None or (drawing is not None and not drawing.ready(validation)):
            return
        self._last_step = step
        try:
            cap = capture_forward(trainer, pl_module, fixed, self._forward, self.config, self._sites)
        except Exception as err:  # the user's training goes on; the capture is reported, not raised
            return self._warn_once(
                "forward",
                f"AttentionMonitor: the capture forward failed ({type(err).__name__}: {err}); no attention "
                "is drawn for it. Check `forward_fn` / `sample_input` against your model.",
            )
        if drawing is None or self._setup is None:
            return  # a rank that only takes part in a sharded forward: rank 0 draws
        samples = self._samples
        labels = samples.describe(self._label, self._setup.grid, warn, has_cross_attention(self._sites))
        modules = module_rows(self._sites, cap) if self._modules_due else ()
        self._modules_due = False
        epoch, diagnose, pending = trainer.current_epoch, not trainer.sanity_checking, tuple(cap.pending)
        job = Job(step, epoch, pending, labels, samples.images, diagnose, modules, samples.targets)
        job = replace(job, token_ids=samples.ids)
        if self.config.relevance:  # a separate forward + backward; the training state is left as it was
            forward, sites = self._forward, self._sites
            rel = relevance_job(trainer, pl_module, fixed, forward, self.config, sites, self._warn_once)
            job = replace(job, relevance=rel)
        drawing.submit(job)

    def _warn_once(self, key: str, message: str) -> None:
        if self._warned.first(key):
            warn(message)

    # -- state and cleanup ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The fixed samples, counters, the pipeline's bounded history and the step and spool file of
        each capture still drawing (never the capture itself; never waits for drawing)."""
        drawing = self._drawing.state() if self._drawing is not None else Drawing.saved(self._restored)
        counters = {"val_runs": self._val_runs, "last_step": self._last_step}
        return {**self._samples.state_dict(), **counters, **drawing}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_runs = state_dict.get("val_runs", 0)
        # Lightning finishes a validation a checkpoint interrupted (saved at its end) once more on
        # resume: its capture is in flight or drawn already, and is not taken twice (alike on every rank)
        self._last_step = state_dict.get("last_step")
        if not self._samples.load_state_dict(state_dict, warn):
            state_dict = {}  # other samples: what was drawn from the old ones starts over
        self._restored = Drawing.saved(state_dict)
        if self._drawing is not None:
            self._drawing.restore(self._restored)  # restored after setup: start from the checkpoint

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close(DRAIN_SECONDS)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Ctrl-C or an error: what was captured is still written (a shorter bounded wait), and what
        could not be is named in a warning."""
        self._close(INTERRUPT_SECONDS)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Everything captured is drawn and written before this returns, or named in a warning
        (at most ``DRAIN_SECONDS``); safe to call twice."""
        self._close(DRAIN_SECONDS)

    def _close(self, seconds: float) -> None:
        if self._drawing is not None:
            self._drawing.close(seconds)
            self._restored, self._seconds_per_capture = self._drawing.restored, self._drawing.seconds
            self._drawing = None
        if self._sinks is not None:
            self._sinks.close()  # the loggers as they were before this fit
            self._sinks = None
