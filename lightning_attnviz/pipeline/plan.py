"""What one capture draws: the picture kinds as separate drawing steps, the image overlays, and the
Attention tab's records. Plain functions of the fit's :class:`~lightning_attnviz.pipeline.messages.Setup`,
the capture's :class:`~lightning_attnviz.pipeline.messages.Job` and what was computed from it; the
:class:`~lightning_attnviz.pipeline.run.Pipeline` runs each step on its own and encodes the results.

:func:`view_groups` draws from what a saved capture holds (the stored maps, images, relevance and
:class:`~lightning_attnviz.render.plots.PictureSettings`): the CLI draws through it too, so a picture
drawn again from the file is the picture the monitor logged."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, overload

import numpy as np

from lightning_attnviz.analysis.history import History
from lightning_attnviz.analysis.views import AttentionView, LayerStats, pool_view
from lightning_attnviz.analysis.vision import cls_to_patches, mean_received, rollout
from lightning_attnviz.capture.blocks import plan_axis
from lightning_attnviz.capture.grid import PatchGrid, stage_grid
from lightning_attnviz.capture.inputs import AttentionMap
from lightning_attnviz.capture.relevance import RelevanceMap
from lightning_attnviz.pipeline.health import health_groups, relevance_pictures
from lightning_attnviz.pipeline.messages import Job, Setup
from lightning_attnviz.render.maps import Picture, render_views
from lightning_attnviz.render.overlay import overlay, overlay_grid
from lightning_attnviz.render.plots import IMAGE_PLOTS, TOKEN_PLOTS, PictureSettings
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


Groups = list[tuple[str, Callable[[], list[Picture]]]]


def drawn_views(
    s: PictureSettings, stored: Sequence[AttentionView], limit: int | None = None
) -> list[AttentionView]:
    """The stored maps as the token pictures draw them: pooled by the rule to ``max_tokens`` (or to
    ``limit``, smaller: the history's :data:`~lightning_attnviz.analysis.history.HISTORY_TOKENS`)."""
    limit = s.max_tokens if limit is None else min(limit, s.max_tokens)
    return [pool_view(v, limit, s.grid, s.keep) for v in stored]


def picture_groups(
    setup: Setup,
    history: History,
    stored: list[AttentionView],
    drawn: list[AttentionView],
    records: list[AttentionMap],
    job: Job,
    stats: Sequence[LayerStats] = (),
    drift: Mapping[str, np.ndarray] | None = None,
    previous: PreviousStats | None = None,
    evolving: list[AttentionView] | None = None,
) -> Groups:
    """``(kind, draw)`` per picture kind ``setup.plots`` asks for: each is drawn, and fails, on its own.

    Args:
        stored, drawn: the maps as stored and as the token pictures draw them (:func:`drawn_views`).
        evolving: the maps as the history keeps them, for the evolution strip (default ``drawn``).
        stats, drift: this capture's per-head scalars (in forward order) and drift, for ``"stats"``.
        previous: what the previous capture's stats pictures were drawn from, for their change panels.
    """
    c = setup.config
    evolving = drawn if evolving is None else evolving
    strips = {}
    if "evolution" in setup.plots:
        for v in evolving:
            strip = history.strip(v.sample, v.layer)
            if strip is not None:
                strips[(v.sample, v.layer)] = strip
    labels = [list(x) if x is not None else None for x in job.labels]
    groups = view_groups(setup.pictures, stored, drawn, job.images, job.step, strips, job.relevance, labels)
    if strips:  # the strip is drawn at the history's resolution
        redrawn = ("evolution", lambda: render_views(evolving, job.step, ["evolution"], (), c.top_k, strips))
        groups = [redrawn if k == "evolution" else (k, draw) for k, draw in groups]
    if "stats" in setup.plots and stats:
        groups.append(("stats", lambda: stats_pictures(setup, stats, drift, job, previous)))
    groups += health_groups(setup.plots, records, labels, job, c.max_tokens, c.health, setup.sink)
    return groups


def view_groups(
    s: PictureSettings,
    stored: Sequence[AttentionView],
    drawn: Sequence[AttentionView],
    images: Sequence[np.ndarray],
    step: int,
    strips: Mapping[tuple[int, str], Any] | None = None,
    relevance: Sequence[RelevanceMap] = (),
    labels: Sequence[Sequence[str] | None] = (),
) -> Groups:
    """``(kind, draw)`` per picture drawn from what a saved capture holds: the token pictures (from
    ``drawn``), each head's own heatmap, the image overlays and rollout (from ``stored``, over
    ``images``, float in [0, 1]) and relevance. The monitor and the CLI both draw through it."""
    kinds = [k for k in s.plots if k in TOKEN_PLOTS]
    groups: Groups = [(k, partial(render_views, drawn, step, [k], (), s.top_k, strips)) for k in kinds]
    if s.heads:
        groups.append(("head heatmaps", lambda: render_views(drawn, step, [], s.heads, s.top_k, strips)))
    if s.grid is not None and images:
        for kind in IMAGE_PLOTS:
            if kind in s.plots:
                groups.append((kind, partial(vision, s, kind, stored, images, step)))
    if relevance:
        groups.append(("relevance", lambda: relevance_pictures(relevance, labels, s.grid, images, step)))
    return groups


def stats_pictures(
    setup: Setup,
    stats: Sequence[LayerStats],
    drift: Mapping[str, np.ndarray] | None,
    job: Job,
    previous: PreviousStats | None,
) -> list[Picture]:
    """One layer × head matrix per metric, the sink keys and distance unit as this run counts them."""
    unit = "pixels" if setup.grid is not None else "positions"
    return list(render_stats(stats, drift, job.step, previous, setup.sink, unit))


def vision(
    s: PictureSettings, kind: str, views: Sequence[AttentionView], images: Sequence[np.ndarray], step: int
) -> list[Picture]:
    """Attention over the image: CLS → patches (or the mean received) per layer, each over its own
    stage's grid, and rollout where every layer lies on one grid.

    ``views``: the stored maps, in sample then forward order; a map pooled while capturing is drawn
    over the image when its patches were pooled in squares (each patch showing its square's share,
    spread evenly), and left out of rollout (which needs every layer's exact map).
    """
    base = s.grid
    if base is None:
        return []
    pictures = []
    for sample, image in enumerate(images):
        of_sample = [v for v in views if v.sample == sample]
        on_grid = [(v, grid_of(v, base)) for v in of_sample if v.layout != "pool"]
        heats = [(v, grid, patch_heats(v, grid)) for v, grid in on_grid]
        rows = [(v, _pool_row(v, base)) for v in of_sample if v.layout == "pool"]
        title = f"sample {sample} · step {step}"
        if kind == "rollout":
            exact = [(v, grid) for v, grid, heat in heats if heat is not None and v.pooling is None]
            if exact and len({grid for _, grid in exact}) == 1:  # no patch merging between the layers
                readout = next((row for _, row in rows if row is not None), None)
                maps = [v for v, _ in exact]
                pictures.append(_rollout(s, exact[0][1], image, maps, sample, readout, step))
            continue
        for v, grid, heat in heats:
            if heat is not None:
                what = _what(v, grid, base)
                pictures.append(_over(kind, sample, image, heat, (v.layer, title), what, grid))
        for v, row in rows:
            if row is not None:  # the latent → patches row the classifier reads
                heat = row[:, base.prefix_tokens :].reshape(-1, base.rows, base.cols)
                note = "attention pool → patches (what the classifier reads), mean over latents"
                pictures.append(_over(kind, sample, image, heat, (v.layer, title), note, base))
    return pictures


def on_grids(records: list[AttentionMap], base: PatchGrid) -> list[tuple[AttentionMap, PatchGrid]]:
    """The exact self-attention maps over the image, each with its grid: its own stage's for a windowed
    map (:attr:`AttentionMap.grid`), else the model's patch grid."""
    found = []
    for r in records:
        grid = base.stage(r.grid) if r.grid is not None else base
        if r.block == (1, 1) and r.weights.shape[-2] == r.weights.shape[-1] == grid.length:
            found.append((r, grid))
    return found


@overload
def grid_of(view: AttentionView, base: PatchGrid) -> PatchGrid: ...
@overload
def grid_of(view: AttentionView, base: PatchGrid | None) -> PatchGrid | None: ...
def grid_of(view: AttentionView, base: PatchGrid | None) -> PatchGrid | None:
    """The token grid a view's map lies on: its own stage's for a windowed map
    (:attr:`AttentionView.stage`), else the model's patch grid."""
    return stage_grid(base, view.stage) if view.stage is not None else base


def _what(view: AttentionView, grid: PatchGrid, base: PatchGrid) -> str:
    """What an overlay shows, said on the picture."""
    what = "CLS → patches" if grid.prefix_tokens else "mean attention received"
    if grid != base:
        what += f"; stage grid {grid.rows}×{grid.cols}"
    if view.pooling is not None:
        what += f"; {view.note}; each patch: its square's share / size"
    return what


def patch_heats(view: AttentionView, grid: PatchGrid) -> np.ndarray | None:
    """``(heads, rows, cols)``: CLS → patches, or without prefix tokens the mean attention each patch
    receives; ``None`` when the map is not over ``grid``'s tokens. A map pooled in squares of patches
    gives each patch its square's weight divided by the square's size (what is known, spread evenly)."""
    p = grid.prefix_tokens
    if view.pooling is None:
        if view.weights.shape[-2:] != (grid.length, grid.length):
            return None
        return cls_to_patches(view.weights, grid) if p else mean_received(view.weights, grid)
    q, k = view.pooling
    if q.grid != grid or k.grid != grid:
        return None
    spread = np.eye(k.blocks)[k.group] / k.sizes[k.group][:, None]  # (tokens, blocks): evenly
    keys = view.weights.astype(np.float64) @ spread.T  # (H, q blocks, tokens)
    if p:
        row = keys[:, q.group[0], p:]  # CLS is a block of its own
    else:
        counts = q.sizes.astype(np.float64)  # query rows per block: the mean over every query patch
        row = (keys[..., p:] * counts[:, None]).sum(axis=-2) / counts.sum()
    return row.reshape(-1, grid.rows, grid.cols)


def tab_records(setup: Setup, into: list[tuple[str, bytes]], stored: list[AttentionView], job: Job) -> None:
    """The Attention tab's records, appended to ``into``: the stored maps, pooled by the rule to
    ``dashboard_tokens``, and for a map over the image's patches the picture itself (with the pooled
    grid when its squares are whole)."""
    base, c = setup.grid, setup.config
    for view in stored:
        grid = grid_of(view, base)
        view = pool_view(view, c.dashboard_tokens, grid, setup.sink)
        cells = _record_grid(view, grid if base is not None else None)
        image = job.images[view.sample] if cells is not None and view.sample < len(job.images) else None
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
            grid=cells.grid if image is not None and cells is not None else None,
            prefix_tokens=cells.prefix_tokens if image is not None and cells is not None else 0,
            epoch=job.epoch,
            blocks=screen_blocks(view, grid, setup.sink),
        )
        into.append((setup.tags.tab(view.sample, view.layer), blob))


def screen_blocks(
    view: AttentionView, grid: PatchGrid | None, keep: int
) -> tuple[record.AxisBlocks, record.AxisBlocks]:
    """How the tab pools a record's axes on screen: by the rule, as :func:`pool_view` would pool the
    view further (its prefix and sink tokens alone, its patches, pooled or not, in squares)."""
    plans = view.pooling or tuple(plan_axis(n, None, grid) for n in view.weights.shape[-2:])
    out = []
    for plan in plans:
        cells = plan.cells
        on = None if cells is None else (cells.rows, cells.cols, cells.prefix_tokens)
        if plan.pooled:
            out.append(record.AxisBlocks(plan.alone, on, tuple(int(n) for n in plan.sizes), plan.factor))
        else:
            alone = max(keep, cells.prefix_tokens if cells is not None else 0)
            out.append(record.AxisBlocks(min(plan.length, alone), on))
    return out[0], out[1]


def _record_grid(view: AttentionView, grid: PatchGrid | None) -> PatchGrid | None:
    """The patch grid of a tab record's keys: the image's, or the pooled one when its squares are
    whole (the tab draws a key over an equal share of the image); ``None`` otherwise."""
    if grid is None:
        return None
    if view.pooling is None:
        return grid if view.weights.shape[-1] == grid.length else None
    keys = view.pooling[1]
    whole = keys.grid == grid and grid.rows % keys.factor == 0 and grid.cols % keys.factor == 0
    return keys.cells if whole else None


def _pool_row(view: AttentionView, grid: PatchGrid) -> np.ndarray | None:
    """An attention pool's weights on the grid's tokens, ``(heads, grid.length)``, averaged over its
    latent queries (keys that are only the patches get zero prefix columns); ``None`` if its keys are
    not this grid's tokens."""
    if view.pooling is not None:
        return None
    w = view.weights.astype(np.float64).mean(axis=-2)  # (heads, keys)
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
    s: PictureSettings,
    grid: PatchGrid,
    image: np.ndarray,
    views: list[AttentionView],
    sample: int,
    readout: np.ndarray | None,
    step: int,
) -> Picture:
    """Attention rollout through the layers over the image, read out by the CLS token, the attention
    pool's row when the model has one, or the mean attention received."""
    rolled = rollout([v.weights for v in views], s.rollout_fusion, s.rollout_discard, grid.prefix_tokens)
    note = f"{len(views)} layers, {s.rollout_fusion} over heads"
    note += f", {s.rollout_discard:.0%} discarded" if s.rollout_discard else ""
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
