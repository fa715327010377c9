"""The fixed samples at capture time, on the training thread: the extra forward that captures them,
where they come from before any validation ran, and what the pictures need to know about them."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import torch

from lightning_attnviz.capture.context import AttentionCapture
from lightning_attnviz.capture.discover import AttentionSite, find_attention
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.samples import (
    axis_labels,
    batch_rows,
    first_rows,
    sample_token_ids,
    select_target,
)
from lightning_attnviz.capture.samples import images as sample_images
from lightning_attnviz.pipeline.settings import MonitorConfig
from lightning_attnviz.util import lightning as lit

Warn = Callable[[str], None]  # raises one RuntimeWarning on the training thread


def capture_forward(
    trainer: Any,
    pl_module: Any,
    fixed: Any,
    forward: Callable,
    config: MonitorConfig,
    sites: list[AttentionSite],
) -> AttentionCapture:
    """One extra forward on the fixed samples, in eval mode under ``no_grad``, with the trainer's
    precision; modes and random streams are restored whatever happens.

    Raises:
        Exception: whatever the user's forward raised (the caller turns it into a warning).
    """
    modes = {m: m.training for m in pl_module.modules()}
    device = pl_module.device
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    precision = trainer.precision_plugin
    cap = AttentionCapture(
        pl_module, config.samples, max_tokens=config.store_tokens, stats=config.stats, defer=True, sites=sites
    )
    try:
        pl_module.eval()
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            inputs = precision.convert_input(lit.to_device(fixed, device))
            with cap, precision.forward_context():
                forward(pl_module, inputs)
    finally:
        for module, training in modes.items():
            module.training = training
    return cap


def first_val_batch(trainer: Any) -> Any:
    """The first validation batch, for a step capture before any validation ran (``None`` if there is
    no usable validation loader: the training batch then stands in, with a warning)."""
    try:
        with torch.random.fork_rng():  # a DataLoader draws its base seed from the global stream
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
            loaders = trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            return None if loader is None else next(iter(loader))
    except Exception:
        return None


def describe(
    fixed: Any,
    labeller: Callable | None,
    grid: PatchGrid | None,
    config: MonitorConfig,
    warn: Warn,
    encoder_decoder: bool = False,
) -> tuple[tuple, tuple, tuple]:
    """Source token labels, target (decoder) token labels and displayable images of the fixed
    samples; a failing labeller or ``target`` costs the labels (positions are shown), never the capture.
    ``encoder_decoder``: the model has cross-attention, so its target axes are not its source."""
    n = config.samples
    target = config.target
    if target is not None:
        try:
            select_target(fixed, target)
        except Exception as err:  # the user's callable may raise anything: positions, and one warning
            warn(f"AttentionMonitor: {err}; the decoder's axes show positions.")
            target, encoder_decoder = None, True
    try:
        axes = axis_labels(fixed, labeller, grid, n, target, encoder_decoder)
        labels, targets = axes["source"], axes["target"]
    except BaseException as err:  # even SystemExit from a user's labeller; never Ctrl-C
        if isinstance(err, KeyboardInterrupt):
            raise
        warn(
            f"AttentionMonitor: `tokens` failed to label the samples ({type(err).__name__}: {err}, "
            f"raised at {raised_at(err)}); axes show positions instead."
        )
        labels = [None if grid is None else grid.labels()] * n
        targets = [None] * n
    images: list = []
    if grid is not None:
        try:
            images = sample_images(fixed, config.image_mean, config.image_std)
        except (ValueError, RuntimeError, TypeError) as err:
            warn(f"AttentionMonitor: the sample images cannot be shown ({err}); no overlays are drawn.")
    as_tuples = lambda rows: tuple(None if x is None else tuple(x) for x in rows)  # noqa: E731
    return as_tuples(labels), as_tuples(targets), tuple(images)


def module_rows(sites: list[AttentionSite], cap: AttentionCapture) -> tuple[tuple[str, str, str, str], ...]:
    """name, type, heads and how each attention module was captured, for the module table; a layout
    capture declares unsupported says so, and a map that is not plain token attention carries its note."""
    paths: dict[str, set[str]] = {}
    notes: dict[str, set[str]] = {}
    for p in cap.pending:
        paths.setdefault(p.module, set()).add(p.path)
        note = getattr(p, "note", None)
        if note:
            notes.setdefault(p.module, set()).add(note)
    skipped = getattr(cap, "skipped", {})

    def how(name: str) -> str:
        if name in skipped:
            return f"not captured: {skipped[name]}"
        via = ", ".join(sorted(paths.get(name, ()))) or "not called"
        return "; ".join([via, *sorted(notes.get(name, ()))])

    return tuple((s.name, s.module_type, str(s.num_heads or "?"), how(s.name)) for s in sites)


def raised_at(err: BaseException) -> str:
    """``file:line in function`` of the innermost frame ``err`` passed through: where a user's
    callback raised, for a warning that cannot chain the exception itself."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "an unknown place"
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


class FixedSamples:
    """The rows every capture runs on: ``sample_input``, else the first validation batch's first rows
    (a training batch's only when no validation ever runs); kept in checkpoints so a resumed fit
    draws the same samples."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.rows: Any = self.config.sample_input
        self.train_rows: Any = None
        self.labels: tuple | None = None  # per sample: source tokens, target tokens, images
        self.targets: tuple = ()
        self.images: tuple = ()
        self.ids: tuple = ()  # per sample, the token ids (role scores)

    def take(self, batch: Any, warn: Warn) -> None:
        if batch is None or self.rows is not None:
            return
        self.rows = first_rows(batch, self.config.samples)
        found = batch_rows(self.rows)
        if 0 < found < self.config.samples:
            warn(
                f"AttentionMonitor: the first validation batch has only {found} row(s), fewer than samples="
                f"{self.config.samples}; pictures are drawn for {found}. Pass `sample_input=` to choose."
            )

    def take_train(self, batch: Any) -> None:
        if self.train_rows is None:
            self.train_rows = first_rows(batch, self.config.samples)

    def current(self) -> Any:
        return self.rows if self.rows is not None else self.train_rows

    def describe(
        self, labeller: Callable | None, grid: PatchGrid | None, warn: Warn, encoder_decoder: bool = False
    ) -> tuple:
        """Labels and images, made once per set of samples; returns the source labels."""
        if self.labels is None:
            self.labels, self.targets, self.images = describe(
                self.current(), labeller, grid, self.config, warn, encoder_decoder
            )
            self.ids = () if grid is not None else sample_token_ids(self.current(), self.config.samples)
        return self.labels

    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.config.samples, "fixed": self.rows, "train_fixed": self.train_rows}

    def load_state_dict(self, state: dict[str, Any], warn: Warn) -> bool:
        """Restore the checkpoint's samples; ``False`` when they were taken with another ``samples``
        (they are then taken again, and what was drawn from them starts over)."""
        saved = state.get("samples", self.config.samples)
        if self.config.sample_input is not None:
            return True
        if saved != self.config.samples and state.get("fixed") is not None:
            warn(
                f"AttentionMonitor: the checkpoint's fixed samples were taken with samples={saved}; this "
                f"monitor has samples={self.config.samples}, so they are taken again and the evolution "
                "strips start over."
            )
            return False
        self.rows, self.train_rows, self.labels = state.get("fixed"), state.get("train_fixed"), None
        return True


def has_cross_attention(sites: list[AttentionSite]) -> bool:
    """Whether the model reads a source from a decoder (its target axes are then not its source)."""
    return any(site.axes == ("target", "source") for site in sites)


def find_sites(pl_module: Any, modules: Any) -> tuple[list[AttentionSite], str | None]:
    """The attention modules to watch, or why there are none."""
    try:
        sites = find_attention(pl_module, modules)
    except ValueError as err:
        return [], f"AttentionMonitor: {err}. Nothing will be captured."
    if sites:
        return sites, None
    return [], (
        f"AttentionMonitor found no attention modules in {type(pl_module).__name__}: it looks for "
        "nn.MultiheadAttention and classes named *Attention*/*Attn*. Pass `modules=`."
    )
