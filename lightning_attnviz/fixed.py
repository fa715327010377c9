"""The fixed samples at capture time, on the training thread: the extra forward that captures them,
where they come from before any validation ran, and what the pictures need to know about them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lightning_attnviz import _lightning as lit
from lightning_attnviz.capture import AttentionCapture
from lightning_attnviz.config import MonitorConfig
from lightning_attnviz.discover import AttentionSite
from lightning_attnviz.samples import axis_labels
from lightning_attnviz.samples import images as sample_images
from lightning_attnviz.vision import PatchGrid


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
    warn: Callable[[str], None],
) -> tuple[tuple, tuple, tuple]:
    """Source token labels, target (decoder) token labels and displayable images of the fixed
    samples; a failing labeller costs the labels (positions are shown), never the capture."""
    n = config.samples
    try:
        axes = axis_labels(fixed, labeller, grid, n)
        labels, targets = axes["source"], axes["target"]
    except BaseException as err:  # even SystemExit from a user's labeller; never Ctrl-C
        if isinstance(err, KeyboardInterrupt):
            raise
        warn(
            f"AttentionMonitor: `tokens` failed to label the samples ({type(err).__name__}: {err}); "
            "axes show positions instead."
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
        if getattr(p, "note", None):
            notes.setdefault(p.module, set()).add(p.note)
    skipped = getattr(cap, "skipped", {})

    def how(name: str) -> str:
        if name in skipped:
            return f"not captured: {skipped[name]}"
        via = ", ".join(sorted(paths.get(name, ()))) or "not called"
        return "; ".join([via, *sorted(notes.get(name, ()))])

    return tuple((s.name, s.module_type, str(s.num_heads or "?"), how(s.name)) for s in sites)
