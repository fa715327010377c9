"""What one capture draws: the picture kinds as separate drawing steps, the image overlays, and the
Attention tab's records. Plain functions of the fit's :class:`~lightning_attnviz.pipeline.messages.Setup`, the
capture's :class:`~lightning_attnviz.pipeline.messages.Job` and what was computed from it; the
:class:`~lightning_attnviz.pipeline.run.Pipeline` runs each step on its own and encodes the results."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np

from lightning_attnviz.analysis.history import History
from lightning_attnviz.analysis.views import AttentionView, LayerStats, make_views
from lightning_attnviz.analysis.vision import cls_to_patches, mean_received, rollout
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.inputs import AttentionMap
from lightning_attnviz.pipeline.health import health_groups
from lightning_attnviz.pipeline.messages import Job, Setup
from lightning_attnviz.render.maps import Picture, render_views
from lightning_attnviz.render.overlay import overlay, overlay_grid
from lightning_attnviz.render.plots import IMAGE_PLOTS, TOKEN_PLOTS
from lightning_attnviz.render.stats import StatsPicture, render_stats
from lightning_attnviz.sinks.tags import Tags
from lightning_attnviz.tab import record

# what the stats matrices of the previous capture were drawn from: (step, stats, drift)
PreviousStats = tuple[int, Sequence[LayerStats], Mapping[str, np.ndarray]]


def picture_tag(tags: Tags, picture: Picture) -> str:
    """The TensorBoard tag of a drawn picture."""
    if isinstance(picture, StatsPicture):
        return tags.stats_picture(picture.metric)
    kind = picture.kind if picture.head is None else "heatmap"
    return tags.picture(kind, picture.sample, picture.layer, picture.head)


def picture_groups(
    setup: Setup,
    history: History,
    views: list[AttentionView],
    records: list[AttentionMap],
    job: Job,
    stats: Sequence[LayerStats] = (),
    drift: Mapping[str, np.ndarray] | None = None,
    previous: PreviousStats | None = None,
) -> list[tuple[str, Callable[[], list[Picture]]]]:
    """``(kind, draw)`` per picture kind ``setup.plots`` asks for: each is drawn, and fails, on its own.

    Args:
        stats, drift: this capture's per-head scalars (in forward order) and drift, for ``"stats"``.
        previous: what the previous capture's stats pictures were drawn from, for their change panels.
    """
    c = setup.config
    strips = {}
    if "evolution" in setup.plots:
        for v in views:
            strip = history.strip(v.sample, v.layer)
            if strip is not None:
                strips[(v.sample, v.layer)] = strip
    kinds = [k for k in setup.plots if k in TOKEN_PLOTS]
    groups: list[tuple[str, Callable[[], list[Picture]]]] = [
        (k, partial(render_views, views, job.step, [k], (), c.top_k, strips)) for k in kinds
    ]
    if c.heads:
        groups.append(("head heatmaps", lambda: render_views(views, job.step, [], c.heads, c.top_k, strips)))
    if "stats" in setup.plots and stats:
        groups.append(("stats", lambda: stats_pictures(setup, stats, drift, job, previous)))
    if setup.grid is not None and job.images:
        for kind in IMAGE_PLOTS:
            if kind in setup.plots:
                groups.append((kind, partial(vision, setup, kind, records, job)))
    labels = [list(x) if x is not None else None for x in job.labels]
    groups += health_groups(setup.plots, records, labels, job, c.max_tokens, setup.grid, c.health)
    return groups


def stats_pictures(
    setup: Setup,
    stats: Sequence[LayerStats],
    drift: Mapping[str, np.ndarray] | None,
    job: Job,
    previous: PreviousStats | None,
) -> list[Picture]:
    """One layer × head matrix per metric, the sink keys and distance unit as this run counts them."""
    grid, c = setup.grid, setup.config
    sink = c.sink_tokens or (grid.prefix_tokens if grid is not None and grid.prefix_tokens else 1)
    unit = "pixels" if grid is not None else "positions"
    return list(render_stats(stats, drift, job.step, previous, sink, unit))


def vision(setup: Setup, kind: str, records: list[AttentionMap], job: Job) -> list[Picture]:
    """Attention over the image: CLS → patches (or the mean received) per layer, each over its own
    stage's grid, and rollout where every layer lies on one grid."""
    base = setup.grid
    if base is None:
        return []
    on_grid = on_grids(records, base)
    pools = [r for r in records if getattr(r, "layout", "token") == "pool" and r.block == (1, 1)]
    pictures = []
    for sample, image in enumerate(job.images):
        on_sample = [(r, g) for r, g in on_grid if sample < r.weights.shape[0]]
        rows = [_pool_row(r, sample, base) for r in pools]
        if kind == "rollout":
            if on_sample and len({g for _, g in on_grid}) == 1:  # no patch merging between the layers
                readout = next((row for row in rows if row is not None), None)
                maps = [r for r, _ in on_sample]
                pictures.append(_rollout(setup, on_sample[0][1], image, maps, sample, readout, job.step))
            continue
        for r, grid in on_sample:
            heat_of = cls_to_patches if grid.prefix_tokens else mean_received
            what = "CLS → patches" if grid.prefix_tokens else "mean attention received"
            if grid != base:
                what += f"; stage grid {grid.rows}×{grid.cols}"
            heats = heat_of(r.weights[sample], grid)  # (heads, rows, cols)
            pictures.append(_over(kind, sample, image, heats, _title(r, sample, job), what, grid))
        for r, row in zip(pools, rows, strict=True):
            if row is not None:  # the latent → patches row the classifier reads
                heats = row[:, base.prefix_tokens :].reshape(-1, base.rows, base.cols)
                note = "attention pool → patches (what the classifier reads), mean over latents"
                pictures.append(_over(kind, sample, image, heats, _title(r, sample, job), note, base))
    return pictures


def _title(record: AttentionMap, sample: int, job: Job) -> tuple[str, str]:
    return record.key, f"sample {sample} · step {job.step}"


def on_grids(records: list[AttentionMap], base: PatchGrid) -> list[tuple[AttentionMap, PatchGrid]]:
    """The exact self-attention maps over the image, each with its grid: its own stage's for a windowed
    map (:attr:`AttentionMap.grid`), else the model's patch grid."""
    found = []
    for r in records:
        grid = base.stage(r.grid) if r.grid is not None else base
        if r.block == (1, 1) and r.weights.shape[-2] == r.weights.shape[-1] == grid.length:
            found.append((r, grid))
    return found


def tab_records(
    setup: Setup, into: list[tuple[str, bytes]], records: list[AttentionMap], labels: list, job: Job
) -> None:
    """The Attention tab's records, appended to ``into``: maps pooled to ``dashboard_tokens`` (image
    maps kept whole, so patches stay patches) and, for images, the picture itself."""
    base, c = setup.grid, setup.config
    limit = max(c.dashboard_tokens, base.length if base is not None else 0)
    targets = [None if x is None else list(x) for x in job.target_labels]
    stages = {r.key: base.stage(r.grid) for r in records if base is not None and r.grid is not None}
    for view in make_views(records, labels, limit, targets, base.labels() if base is not None else None):
        grid = stages.get(view.layer, base)
        on_grid = grid is not None and not view.note and view.weights.shape[-1] == grid.length
        image = job.images[view.sample] if on_grid and view.sample < len(job.images) else None
        blob = record.encode_map(
            layer=view.layer,
            sample=view.sample,
            step=job.step,
            weights=view.weights,
            visible=view.visible,
            q_labels=view.q_labels,
            k_labels=view.k_labels,
            note=view.note,
            image=image,
            grid=grid.grid if on_grid and grid is not None else None,
            prefix_tokens=grid.prefix_tokens if on_grid and grid is not None else 0,
            epoch=job.epoch,
        )
        into.append((setup.tags.tab(view.sample, view.layer), blob))


def _pool_row(record: AttentionMap, sample: int, grid: PatchGrid) -> np.ndarray | None:
    """An attention pool's weights on the grid's tokens, ``(heads, grid.length)``, averaged over its
    latent queries (keys that are only the patches get zero prefix columns); ``None`` if its keys are
    not this grid's tokens."""
    if sample >= record.weights.shape[0]:
        return None
    w = record.weights[sample].double().numpy().mean(axis=-2)  # (heads, keys)
    if w.shape[-1] == grid.length:
        return w
    if w.shape[-1] == grid.patches:
        return np.concatenate([np.zeros((w.shape[0], grid.prefix_tokens)), w], axis=-1)
    return None


def _over(
    kind: str, sample: int, image: np.ndarray, heats: np.ndarray, title: tuple, what: str, grid: PatchGrid
) -> Picture:
    """One layer's heat over the image: the head mean (``overlay``) or every head (``overlay_heads``)."""
    if kind == "overlay":
        return Picture(
            kind,
            sample,
            title[0],
            overlay(image, heats.mean(axis=0), title, f"head mean; {what}", grid.patch_size),
        )
    return Picture(kind, sample, title[0], overlay_grid(image, heats, title, what, grid.patch_size))


def _rollout(
    setup: Setup,
    grid: PatchGrid,
    image: np.ndarray,
    records: list[AttentionMap],
    sample: int,
    readout: np.ndarray | None,
    step: int,
) -> Picture:
    """Attention rollout through the layers over the image, read out by the CLS token, the attention
    pool's row when the model has one, or the mean attention received."""
    c = setup.config
    rolled = rollout(
        [r.weights[sample] for r in records], c.rollout_fusion, c.rollout_discard, grid.prefix_tokens
    )
    note = f"{len(records)} layers, {c.rollout_fusion} over heads"
    note += f", {c.rollout_discard:.0%} discarded" if c.rollout_discard else ""
    if readout is not None:
        heat = (readout.mean(axis=0) @ rolled)[grid.prefix_tokens :].reshape(grid.rows, grid.cols)
        note += "; read out by the attention pool"
    elif grid.prefix_tokens:
        heat = cls_to_patches(rolled[None], grid)[0]
        note += "; CLS → patches"
    else:
        heat = mean_received(rolled[None], grid)[0]
        note += "; mean attention received"
    title = ("attention rollout", f"sample {sample} · step {step}")
    return Picture("rollout", sample, None, overlay(image, heat, title, note, grid.patch_size))
