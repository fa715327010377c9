"""AttentionMonitor: the Lightning callback that wires discover → capture → reduce → render → log."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from lightning_attnviz import log
from lightning_attnviz.capture import AttentionCapture, AttentionMap
from lightning_attnviz.discover import ModuleSelector, find_attention
from lightning_attnviz.reduce import AttentionView, History, LayerStats, layer_stats, make_views
from lightning_attnviz.render import PLOT_KINDS, render_views
from lightning_attnviz.render_vision import VISION_PLOTS, render_vision
from lightning_attnviz.samples import (
    Tokens,
    default_forward,
    first_rows,
    tensors,
    token_labeller,
    token_labels,
)
from lightning_attnviz.samples import images as sample_images
from lightning_attnviz.vision import HEAD_FUSIONS, HeadFusion, PatchGrid, find_grid

ForwardFn = Callable[[LightningModule, Any], Any]
_UNIFORM_CAPTURES = 3  # a head uniform at this many captures in a row gets a warning
ALL_PLOTS = (*PLOT_KINDS, *VISION_PLOTS)
TEXT_DEFAULT_PLOTS = PLOT_KINDS
# arrows between 197 patch tokens say little; the image overlays say it better
VISION_DEFAULT_PLOTS = (*VISION_PLOTS, "heatmap", "heads", "atlas", "evolution")


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
        plots: which pictures: ``"heatmap"``, ``"heads"``, ``"arrows"``, ``"atlas"``, ``"evolution"``,
            and for images ``"overlay"``, ``"overlay_heads"``, ``"rollout"``. ``None``: all token
            pictures, or for a vision model the image ones plus heatmap, heads, atlas and evolution.
        max_tokens: pictures of longer sequences are block-pooled to this many rows/columns (noted on
            the image).
        store_tokens: maps longer than this are block-pooled while they are captured, a block of
            query rows at a time, so capture memory stays bounded for any sequence length (one warning
            says so); scalars still use every row at full resolution. Vision overlays need the exact
            map: keep it above the number of image tokens.
        top_k: keys per query in the arrow view.
        log_sanity_check: also capture during the sanity check.
        strip_length: how many past captures the evolution strip shows (the image grows to this width).
        stats: log scalars per layer and head: entropy, normalised entropy, distance, sink share,
            max weight and drift (Jensen–Shannon divergence since the previous capture).
        histograms: log a histogram of each layer's weights.
        save_captures: save each capture's drawn maps to ``<log_dir>/attention_captures/`` (re-render
            them with ``python -m lightning_attnviz``).
        sink_tokens: how many leading keys count as the attention sink; default 1, or a ViT's prefix
            tokens (CLS, registers).
        entropy_collapse: warn once per layer when its mean normalised entropy falls below this.
        uniform_entropy: warn once per head whose normalised entropy stays above this for 3 captures.
        image_grid: the patch grid of image inputs: ``"auto"`` finds a timm or Hugging Face ViT in the
            model; a :class:`~lightning_attnviz.vision.PatchGrid` for hand-written ViTs (grid, prefix
            tokens, patch size); ``None``: no image pictures.
        image_mean, image_std: the normalisation of the images, undone before drawing them (without
            them each image is min-max scaled).
        rollout_fusion: how attention rollout fuses heads: ``"mean"``, ``"max"`` or ``"min"``.
        rollout_discard: fraction of the weakest patch entries rollout zeroes per layer.
        dashboard: write the maps for TensorBoard's interactive Attention tab.
        dashboard_tokens: the tab's maps are block-pooled to this many rows/columns (image maps are
            kept whole).

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
        plots: Sequence[str] | None = None,
        max_tokens: int = 64,
        store_tokens: int = 512,
        top_k: int = 3,
        log_sanity_check: bool = False,
        strip_length: int = 8,
        stats: bool = True,
        histograms: bool = True,
        save_captures: bool = True,
        sink_tokens: int | None = None,
        entropy_collapse: float = 0.02,
        uniform_entropy: float = 0.99,
        image_grid: PatchGrid | Literal["auto"] | None = "auto",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        rollout_fusion: HeadFusion = "mean",
        rollout_discard: float = 0.0,
        dashboard: bool = True,
        dashboard_tokens: int = 128,
    ) -> None:
        _check_int("every_n_epochs", every_n_epochs, minimum=0)
        if every_n_steps is not None:
            _check_int("every_n_steps", every_n_steps, minimum=1)
        _check_int("samples", samples, minimum=1)
        _check_int("max_tokens", max_tokens, minimum=2)
        _check_int("store_tokens", store_tokens, minimum=2)
        _check_int("dashboard_tokens", dashboard_tokens, minimum=2)
        _check_int("top_k", top_k, minimum=1)
        _check_int("strip_length", strip_length, minimum=2)
        if sink_tokens is not None:
            _check_int("sink_tokens", sink_tokens, minimum=1)
        if not (image_grid is None or image_grid == "auto" or isinstance(image_grid, PatchGrid)):
            raise TypeError(f"`image_grid` must be 'auto', None or a PatchGrid, got {image_grid!r}")
        if rollout_fusion not in HEAD_FUSIONS:
            raise ValueError(f"`rollout_fusion` must be one of {list(HEAD_FUSIONS)}, got {rollout_fusion!r}")
        if (
            isinstance(rollout_discard, bool)
            or not isinstance(rollout_discard, (int, float))
            or not (0 <= rollout_discard < 1)
        ):
            raise ValueError(f"`rollout_discard` must be a fraction in [0, 1), got {rollout_discard!r}")
        for name, value in (("entropy_collapse", entropy_collapse), ("uniform_entropy", uniform_entropy)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be a number in [0, 1] (normalised entropy), got {value!r}")
        flags = (
            ("stats", stats),
            ("histograms", histograms),
            ("save_captures", save_captures),
            ("dashboard", dashboard),
        )
        for name, value in flags:
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be True or False, got {value!r}")
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"`forward_fn` must be a callable (pl_module, inputs) -> Any, got {forward_fn!r}")
        if plots is not None and (isinstance(plots, str) or not all(p in ALL_PLOTS for p in plots)):
            raise ValueError(f"`plots` must be None or a list drawn from {list(ALL_PLOTS)}, got {plots!r}")
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
        self.label_tokens = token_labeller(tokens)
        self.plots = None if plots is None else tuple(plots)  # None: chosen in setup (text or vision)
        self.max_tokens = max_tokens
        self.store_tokens = store_tokens
        self._warned_pooling = False
        self._warned_nan: set[str] = set()
        self.top_k = top_k
        self.log_sanity_check = log_sanity_check
        self.stats = stats
        self.histograms = histograms
        self.save_captures = save_captures
        self.sink_tokens = sink_tokens
        self.entropy_collapse = entropy_collapse
        self.uniform_entropy = uniform_entropy
        self.image_grid = image_grid
        self.image_mean = image_mean
        self.image_std = image_std
        self.rollout_fusion = rollout_fusion
        self.rollout_discard = rollout_discard
        self.dashboard = dashboard
        self.dashboard_tokens = dashboard_tokens
        self._grid: PatchGrid | None = None
        self._plots: tuple[str, ...] = ()
        self._warned_grid = False
        self._capture_everywhere = False

        self._fixed: Any = None if sample_input is None else first_rows(sample_input, samples)
        self._train_fixed: Any = None  # fallback samples when no validation batch ever runs
        self._writer: Any = None
        self._worker: log.BackgroundWriter | None = None
        self._enabled = True
        self._val_runs = 0
        self._validated_this_epoch = False
        self._warned_no_val = False
        self._last_step: int | None = None
        self._modules_logged = False
        self._captures_dir: Path | None = None
        self._history = History(strip_length)  # updated on the writer thread
        self._warned_layers: set[str] = set()
        self._uniform_runs: dict[tuple[str, int], int] = {}

    @property
    def state_key(self) -> str:
        # a predicate's repr holds a memory address: name it by its qualified name so a resumed run matches
        modules = (
            getattr(self.modules, "__qualname__", None) if callable(self.modules) else repr(self.modules)
        )
        return self._generate_state_key(samples=self.samples, modules=modules)

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
        # sharded strategies need every rank in the forward; under DDP rank 0 captures alone
        strategy = type(trainer.strategy).__name__.lower()
        self._capture_everywhere = "fsdp" in strategy or "deepspeed" in strategy
        if trainer.is_global_zero:
            self._writer = loggers[0].experiment
            self._captures_dir = Path(loggers[0].log_dir) / log.CAPTURE_DIR
            self._worker = self._worker or log.BackgroundWriter()
        try:
            sites = find_attention(pl_module, self.modules)
        except ValueError as err:
            rank_zero_warn(f"AttentionMonitor: {err}. Nothing will be captured.", category=RuntimeWarning)
            self._enabled = False
            return
        self._grid = find_grid(pl_module) if self.image_grid == "auto" else self.image_grid
        default = VISION_DEFAULT_PLOTS if self._grid is not None else TEXT_DEFAULT_PLOTS
        self._plots = self.plots if self.plots is not None else default
        if not sites:
            rank_zero_warn(
                f"AttentionMonitor found no attention modules in {type(pl_module).__name__}: it looks for "
                "nn.MultiheadAttention and modules whose class name contains 'Attention' or 'Attn'. "
                "Pass `modules=` with their names or a predicate.",
                category=RuntimeWarning,
            )
            self._enabled = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated_this_epoch = False
        self._warned_no_val = False

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
            self._fixed = first_rows(batch, self.samples)
            self._warn_few_samples(self._fixed)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._train_fixed is None and self._enabled:
            self._train_fixed = first_rows(batch, self.samples)

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
        everywhere = self._capture_everywhere and trainer.world_size > 1
        if not self._enabled or (worker is None and not everywhere):
            return
        step = trainer.global_step
        if self._fixed is None:
            self._fixed = self._train_fixed  # a step capture before any validation batch
        if self._fixed is None or step == self._last_step:
            return  # a step capture and a validation capture at the same step: log once
        cap = self._run_capture(trainer, pl_module)  # deferred: weights are computed in draw()
        self._last_step = step
        if worker is None:
            return  # a rank that only takes part in the forward (FSDP): rank 0 draws
        cap.on_warning = worker.warn  # deferred failures surface on the training thread
        modules = [] if self._modules_logged else self._module_rows(pl_module, cap.planned)
        first = not self._modules_logged
        self._modules_logged = True
        keys = self._select_layers(list(cap.planned))
        grid, plots, epoch, fixed = self._grid, self._plots, trainer.current_epoch, self._fixed
        sink = self.sink_tokens or (grid.prefix_tokens if grid is not None and grid.prefix_tokens else 1)
        diagnose = not trainer.sanity_checking  # an untrained model's uniform heads are no news

        def draw() -> None:
            """On the writer thread: the weights themselves, scalars, pictures, PNG encoding, files."""
            writer, warn = self._writer, worker.warn
            records = cap.records
            selected = [records[k] for k in keys if k in records]
            self._warn_pooling(selected, warn)
            self._warn_non_finite(selected, step, warn)
            if grid is not None and not any(r.weights.shape[-1] == grid.length for r in selected):
                self._warn_grid_mismatch(grid, selected, warn)
            stats = [layer_stats(r, sink, grid) for r in selected] if self.stats else []
            if diagnose:
                self._diagnose(stats, step, warn)
            if modules:
                log.write_modules(writer, modules, step)
            if first and stats:
                log.write_layout(writer, [st.layer for st in stats])
            labels = token_labels(fixed, self.label_tokens, grid, self.samples)
            views = make_views(selected, labels, self.max_tokens)
            drift = self._update_history(views, f"step {step} · ep {epoch}")
            if stats:
                log.write_stats(writer, stats, drift, step)
            if self.histograms:
                log.write_histograms(writer, selected, step)
            strips = (
                {(v.sample, v.layer): self._history.strip(v) for v in views} if "evolution" in plots else {}
            )
            pictures = render_views(views, step, plots, self.heads, self.top_k, strips)
            images = sample_images(fixed, self.image_mean, self.image_std) if grid is not None else []
            if images:
                pictures += render_vision(
                    selected, grid, images, step, plots, self.rollout_fusion, self.rollout_discard
                )
            log.write_pictures(writer, pictures, step)
            if self.dashboard:
                self._write_dashboard(selected, labels, images, grid, step)
            writer.flush()
            if self.save_captures and self._captures_dir is not None and views:
                log.save_capture(self._captures_dir, views, step, epoch)

        worker.submit(draw)

    def _write_dashboard(
        self,
        records: list[AttentionMap],
        labels: list[list[str] | None],
        images: list[np.ndarray],
        grid: PatchGrid | None,
        step: int,
    ) -> None:
        """The Attention tab's records: maps pooled to ``dashboard_tokens`` (image maps kept whole, so
        patches stay patches) and, for images, the picture itself."""
        limit = max(self.dashboard_tokens, grid.length if grid is not None else 0)
        maps = []
        for view in make_views(records, labels, limit):
            on_grid = grid is not None and not view.note and view.weights.shape[-1] == grid.length
            image = images[view.sample] if on_grid and view.sample < len(images) else None
            maps.append((log.map_tag(view), log.encode_map(view, step, image, grid if on_grid else None)))
        log.write_plugin_maps(self._writer, maps, step)

    def _warn_few_samples(self, fixed: Any) -> None:
        rows = [t.shape[0] for t in tensors(fixed) if t.dim() > 0]
        if rows and max(rows) < self.samples:
            rank_zero_warn(
                f"AttentionMonitor: the first validation batch has only {max(rows)} row(s), fewer than "
                f"samples={self.samples}; pictures are drawn for {max(rows)}. "
                "Pass `sample_input=` to choose.",
                category=RuntimeWarning,
            )

    def _warn_non_finite(self, records: list[AttentionMap], step: int, warn: Callable[[str], None]) -> None:
        for record in records:
            if record.key not in self._warned_nan and not bool(torch.isfinite(record.weights).all()):
                self._warned_nan.add(record.key)
                warn(
                    f"AttentionMonitor: attention weights of {record.key!r} are NaN or infinite at step "
                    f"{step} (non-finite inputs or scores). Those cells are drawn gray and left out of the "
                    "scalars.",
                )

    def _warn_pooling(self, records: list[AttentionMap], warn: Callable[[str], None]) -> None:
        pooled = [r for r in records if r.block != (1, 1)]
        if pooled and not self._warned_pooling:
            self._warned_pooling = True
            longest = max(max(r.length) for r in pooled)
            warn(
                f"AttentionMonitor: attention maps up to {longest} tokens long are block-pooled to at most "
                f"store_tokens={self.store_tokens} per side while capturing, to bound memory (query rows "
                "averaged, keys summed). Scalars still use every row; pictures say how they were pooled.",
            )

    def _warn_grid_mismatch(
        self, grid: PatchGrid, records: list[AttentionMap], warn: Callable[[str], None]
    ) -> None:
        if self._warned_grid or not records:
            return
        self._warned_grid = True
        try:
            grid.split(records[0].weights.shape[-1])
        except ValueError as err:
            warn(
                "AttentionMonitor draws no image overlays: no captured layer matches the patch grid "
                f"({err}). Pass `image_grid=PatchGrid(...)` for the images you feed.",
            )

    def _update_history(self, views: list[AttentionView], label: str) -> dict[str, np.ndarray]:
        """Record the views; the drift since the previous capture per layer, averaged over samples."""
        per_layer: dict[str, list[np.ndarray]] = {}
        for view in views:
            drift = self._history.add(view, label)
            if drift is not None:
                per_layer.setdefault(view.layer, []).append(drift)
        return {layer: np.mean(values, axis=0) for layer, values in per_layer.items()}

    def _diagnose(self, stats: list[LayerStats], step: int, warn: Callable[[str], None]) -> None:
        """Warn once per layer on entropy collapse, and once per head that stays uniform."""
        for st in stats:
            norm = st.entropy_norm
            finite = norm[np.isfinite(norm)]
            if finite.size and finite.mean() < self.entropy_collapse and st.layer not in self._warned_layers:
                self._warned_layers.add(st.layer)
                warn(
                    f"AttentionMonitor: attention entropy collapsed in {st.layer!r} at step {step}: "
                    f"normalised entropy {finite.mean():.3f} < entropy_collapse={self.entropy_collapse} "
                    "(each query attends to about one key). Entropy collapse is a known sign of unstable "
                    "training.",
                )
            for head, value in enumerate(norm):
                key = (st.layer, head)
                runs = self._uniform_runs.get(key, 0)
                self._uniform_runs[key] = runs + 1 if value > self.uniform_entropy else 0
                if self._uniform_runs[key] == _UNIFORM_CAPTURES:
                    warn(
                        f"AttentionMonitor: head {head} of {st.layer!r} has stayed uniform for "
                        f"{_UNIFORM_CAPTURES} captures (normalised entropy {value:.3f} > "
                        f"uniform_entropy={self.uniform_entropy}): it attends to everything equally.",
                    )

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The fixed samples, counters and the bounded history, so a resumed fit continues the strips."""
        if self._worker is not None:
            self._worker.flush()  # the history is updated on the writer thread
        return {
            "fixed": self._fixed,
            "train_fixed": self._train_fixed,
            "val_runs": self._val_runs,
            "last_step": self._last_step,
            "modules_logged": self._modules_logged,
            "history": self._history.state_dict(),
            "warned_layers": sorted(self._warned_layers),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._fixed = state_dict["fixed"]
        self._train_fixed = state_dict["train_fixed"]
        self._val_runs = state_dict["val_runs"]
        self._last_step = state_dict["last_step"]
        self._modules_logged = state_dict["modules_logged"]
        self._history.load_state_dict(state_dict["history"])
        self._warned_layers = set(state_dict["warned_layers"])

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

    def _run_capture(self, trainer: Trainer, pl_module: LightningModule) -> AttentionCapture:
        """One extra forward on the fixed samples, leaving the model and RNG as they were. Capture is
        deferred: the taps keep copies of the sampled rows' q/k, the weights are computed on reading."""
        modes = {m: m.training for m in pl_module.modules()}
        device = pl_module.device
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        precision = trainer.precision_plugin
        try:
            pl_module.eval()
            with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
                inputs = precision.convert_input(move_data_to_device(self._fixed, device))
                with (
                    AttentionCapture(
                        pl_module, self.samples, self.modules, self.store_tokens, self.stats, defer=True
                    ) as cap,
                    precision.forward_context(),
                ):
                    self.forward_fn(pl_module, inputs)
        finally:
            for module, training in modes.items():
                module.training = training
        return cap

    def _select_layers(self, keys: list[str]) -> list[str]:
        """The captured layers ``layers=`` asks to draw, by index (negative from the end) or name/glob."""
        if self.layers is None:
            return keys
        chosen = [
            key
            for i, key in enumerate(keys)
            if any(
                (isinstance(sel, int) and sel in (i, i - len(keys)))
                or (isinstance(sel, str) and fnmatch.fnmatchcase(key, sel))
                for sel in self.layers
            )
        ]
        if not chosen:
            rank_zero_warn(
                f"AttentionMonitor: `layers={self.layers}` matches none of the captured layers {keys}.",
                category=RuntimeWarning,
            )
        return chosen

    def _module_rows(self, pl_module: LightningModule, planned: dict[str, tuple[str, str]]) -> list[tuple]:
        """name, type, heads and capture path of every attention module, for the text table."""
        paths: dict[str, set[str]] = {}
        for module, path in planned.values():
            paths.setdefault(module, set()).add(path)
        rows = []
        for site in find_attention(pl_module, self.modules):
            via = ", ".join(sorted(paths.get(site.name, ()))) or "not called"
            rows.append((site.name, site.module_type, site.num_heads or "?", via))
        return rows


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
