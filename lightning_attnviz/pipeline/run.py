"""One capture, from what the taps kept to what the sinks write: compute → reduce → render → encode.

Runs in the drawing process (or thread). It receives plain, picklable data (:class:`Setup` once per
fit, a :class:`Job` per capture, both from :mod:`lightning_attnviz.pipeline.messages`), owns its state
(history, diagnostics, warn-once sets), changes nothing global, and returns :class:`Outputs` plus warning
messages. Every step of a capture fails on its own: a broken picture kind costs that picture, never
the scalars or the other pictures. What is drawn is :mod:`lightning_attnviz.pipeline.plan`'s; this module
orders the steps and encodes the results.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_attnviz.analysis.history import HISTORY_TOKENS, Diagnostics, History
from lightning_attnviz.analysis.roles import RoleHistory, roles_note
from lightning_attnviz.analysis.views import AttentionView, LayerStats, layer_stats, make_views
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.capture.inputs import AttentionMap, Pending, compute
from lightning_attnviz.pipeline.health import HealthWarnings, health_scalars, module_table
from lightning_attnviz.pipeline.messages import Job, Setup
from lightning_attnviz.pipeline.plan import (
    PreviousStats,
    drawn_views,
    on_grids,
    picture_groups,
    picture_tag,
    tab_records,
)
from lightning_attnviz.pipeline.roles import marker_texts, roles_step
from lightning_attnviz.pipeline.tab_extras import add_markers, add_overview
from lightning_attnviz.render.maps import Picture, encode_png
from lightning_attnviz.sinks import capture_file as formats
from lightning_attnviz.sinks.base import EncodedPicture, Outputs, head_scalars
from lightning_attnviz.sinks.failures import WriteFailures
from lightning_attnviz.sinks.tags import Tags, clean
from lightning_attnviz.util.checks import missing_heads_message
from lightning_attnviz.util.once import Once


class Pipeline:
    """The drawing side of one monitor during one fit; see the module docstring."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        c = setup.config
        self.history = History(c.strip_length)
        self.diagnostics = Diagnostics(c.entropy_collapse, c.uniform_entropy)
        self.health = HealthWarnings(c.max_logit, c.logit_growth)
        self.roles = RoleHistory()  # each head's role scores at the last captures, for phase changes
        self.layers: list[str] = []  # every layer logged so far, for the custom-scalars layout
        self.previous_stats: PreviousStats | None = None  # for the stats pictures' change panels
        # runs each step (the drawing process hands steps to the thread at the priority due now)
        self.gate: Callable[[Callable[[], Any]], Any] = _inline
        self._warned = Once()
        self.messages: list[str] = []
        self.writes = WriteFailures()  # what could not be written; the caller words it after the sinks

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history.state_dict(),
            "diagnostics": self.diagnostics.state_dict(),
            "health": self.health.state_dict(),
            "roles": self.roles.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state.get("history", {}))
        self.diagnostics.load_state_dict(state.get("diagnostics", {}))
        self.health.load_state_dict(state.get("health", {}))
        self.roles.load_state_dict(state.get("roles", {}))

    def run(self, job: Job) -> tuple[Outputs, list[str]]:
        """Outputs of one capture and the warnings it raised (each at most once per fit)."""
        self.messages = []
        c, tags = self.setup.config, self.setup.tags
        # the images as the capture file keeps them (uint8), so that the CLI draws what is drawn here
        job = replace(job, images=tuple(formats.stored_image(im) / 255.0 for im in job.images))
        out = Outputs(job.step, epoch=job.epoch)
        records = self._select(self._compute(job.pending))
        self._check(records, job)
        if job.modules:
            note = roles_note(records, job.token_ids) if c.stats else ""
            out.text[tags.modules] = module_table(job.modules, records) + note
        if c.health:
            self._step("attention health", lambda: self._health(out, records, job))
        stats = self._statistics(out, records, job) if c.stats else []
        new_layers = [r.key for r in records if r.key not in self.layers]
        if new_layers and c.stats:
            self.layers += new_layers
            out.layout = tags.layout(self.layers, c.head_stats)
        stored: list[AttentionView] = self._step("reduction", lambda: self._stored(records, job)) or []
        views = self._step("pooling for pictures", lambda: drawn_views(self.setup.pictures, stored)) or []
        evolving: list[AttentionView] = (  # what the history keeps (the strips, the drift)
            self._step(
                "pooling for the history", lambda: drawn_views(self.setup.pictures, views, HISTORY_TOKENS)
            )
            or []
        )
        drift = self._drift(evolving, job)
        _stat_scalars(out.scalars, tags, stats, drift, c.head_stats)
        if c.histograms:
            self._step("histograms", lambda: _histograms(out.histograms, tags, records))
        drawn = self._pictures(out, stored, views, records, job, stats, drift, evolving)
        if stats:
            self.previous_stats = (job.step, stats, drift)
        if c.dashboard:
            self._tab(out, stored, drawn, job)
        if c.save_captures and self.setup.log_dir is not None and stored:
            path = Path(self.setup.log_dir) / tags.captures_dir / f"step_{job.step:08d}.npz"
            try:
                self.gate(lambda: self._save(path, stored, job))
            except Exception as err:  # a full disk: told once with the sinks' failures (self.writes)
                self.writes.add("the capture files", f"the capture file {path}", err)
        return out, self.messages

    # -- steps ------------------------------------------------------------------------------------

    def _statistics(self, out: Outputs, records: list[AttentionMap], job: Job) -> list[LayerStats]:
        """Each layer's statistics, the diagnostics they raise, and the heads' role scores."""
        sink, grid = self.setup.sink, self.setup.grid
        stats = self._step("statistics", lambda: [layer_stats(r, sink, grid) for r in records]) or []
        if job.diagnose:
            self.messages += self.diagnostics.check(stats, job.step)
        if stats:
            roles = self.roles, out, self.setup.tags, self.setup.config.head_stats, stats, records, job
            scored = self._step("role scores", lambda: roles_step(*roles))
            if scored is not None:
                stats, said = scored
                self.messages += said
        return stats

    def _tab(self, out: Outputs, stored: list[AttentionView], drawn: list[Picture], job: Job) -> None:
        """The Attention tab's records: the maps, the overview of every stats matrix drawn, markers."""
        tags = self.setup.tags
        self._step("Attention tab maps", lambda: tab_records(self.setup, out.tab, stored, job))
        self._step("Attention tab overview", lambda: add_overview(out, tags, drawn, job.epoch))
        markers = marker_texts(out.phase_changes)
        self._step("Attention tab markers", lambda: add_markers(out, tags, markers))

    def _step(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return self.gate(fn)
        except Exception as err:  # one step failing must never lose the others
            self._warn_once(
                f"step:{what}",
                f"AttentionMonitor: {what} failed ({type(err).__name__}: {err}); "
                "the rest of the capture is logged and training goes on.",
            )
            return None

    def _warn_once(self, key: str, message: str) -> None:
        if self._warned.first(key):
            self.messages.append(message)

    def _stored(self, records: list[AttentionMap], job: Job) -> list[AttentionView]:
        """The maps as stored (saved, sent to the tab, drawn over images): as computed, at float16."""
        labels, targets = _labels(job)
        return make_views(records, labels, None, targets, self.setup.grid, self.setup.sink)

    def _save(self, path: Path, stored: list[AttentionView], job: Job) -> None:
        """The capture file: the stored maps and all the pictures drawn from them need."""
        images = list(job.images) if self.setup.grid is not None else []
        formats.save_capture(
            path,
            stored,
            job.step,
            job.epoch,
            self.setup.grid,
            images,
            pictures=self.setup.pictures,
            labels=[None if x is None else list(x) for x in job.labels],
            relevance=job.relevance,
        )

    def _compute(self, pending: tuple[Pending, ...]) -> list[AttentionMap]:
        c = self.setup.config
        records = []
        for p in pending:
            try:
                records.append(compute(p, c.store_tokens, c.stats, self.setup.sink, self.setup.grid))
            except Exception as err:  # one step failing must never lose the others
                self._warn_once(
                    f"compute:{p.module}",
                    f"Could not compute attention weights for {p.module!r} "
                    f"({type(err).__name__}: {err}); the model's own output is unaffected.",
                )
        return records

    def _health(self, out: Outputs, records: list[AttentionMap], job: Job) -> None:
        """``attention_health/*`` scalars of each layer, and the warnings they raise."""
        for r in records:
            if r.health is not None:
                health_scalars(out.scalars, self.setup.tags, r.key, r.health, self.setup.config.head_stats)
                if job.diagnose:
                    self.messages += self.health.check(r.key, r.health, job.step)

    def _select(self, records: list[AttentionMap]) -> list[AttentionMap]:
        """The layers ``layers=`` asks to draw, by index (negative from the end) or name/glob; a
        selector that matches none of them is said once."""
        chosen = self.setup.config.layers
        if chosen is None:
            return records
        n = len(records)

        def hit(sel: int | str, i: int, r: AttentionMap) -> bool:
            if isinstance(sel, int):
                return sel in (i, i - n)
            return fnmatch.fnmatchcase(r.key, sel)

        keep = [r for i, r in enumerate(records) if any(hit(sel, i, r) for sel in chosen)]
        missed = [sel for sel in chosen if not any(hit(sel, i, r) for i, r in enumerate(records))]
        if missed and records:
            drawn = "the others are drawn" if keep else "nothing is drawn"
            self._warn_once(
                "layers",
                f"AttentionMonitor: `layers={list(chosen)}`: {missed} match none of the {n} captured "
                f"layers {[r.key for r in records]} (indices -{n} to {n - 1}); {drawn}.",
            )
        return keep

    def _check(self, records: list[AttentionMap], job: Job) -> None:
        """One warning for each thing the pictures cannot show as captured."""
        c, grid, tags = self.setup.config, self.setup.grid, self.setup.tags
        for r in records:  # in forward order, so the first of two clashing keys keeps the plain name
            segment = tags.layer(r.key)
            if segment != clean(r.key):
                self._warn_once(
                    f"renamed:{r.key}",
                    f"AttentionMonitor: layers {tags.owner(clean(r.key))!r} and {r.key!r} would share the "
                    f"tag name {clean(r.key)!r}; {r.key!r} is logged as {segment!r}.",
                )
        if c.heads and job.modules:  # modules that did not say their heads at setup: checked here, once
            unknown = {row[0] for row in job.modules if row[2] == "?"}
            heads = {r.key: r.weights.shape[1] for r in records if r.module in unknown}
            message = missing_heads_message(c.heads, heads)
            if message is not None:
                self._warn_once("heads", message)
        pooled = [r for r in records if r.block != (1, 1)]
        if pooled:
            longest = max(max(r.length) for r in pooled)
            self._warn_once(
                "pooled",
                f"AttentionMonitor: attention maps up to {longest} tokens long are "
                f"block-pooled to at most store_tokens={c.store_tokens} per side while capturing, "
                "to bound memory (query rows averaged, keys summed; prefix and sink tokens kept alone, "
                "image patches in squares, other tokens in contiguous blocks). Scalars still use every "
                "row; pictures, the tab and the saved captures say how they were pooled."
                + (
                    " Attention rollout needs every layer's exact map and is not drawn: raise "
                    f"`store_tokens` to {longest} to draw it."
                    if grid is not None and "rollout" in self.setup.plots
                    else ""
                ),
            )
        for r in records:
            if not bool(torch.isfinite(r.weights).all()):
                self._warn_once(
                    f"nan:{r.key}",
                    f"AttentionMonitor: attention weights of {r.key!r} are NaN or "
                    f"infinite at step {job.step} (non-finite inputs or scores). Those cells are drawn "
                    "gray and left out of the scalars.",
                )
        lengths = {n for r in records for n in r.length}
        for s, labels in enumerate(job.labels if grid is None else ()):
            if labels is not None and records and len(labels) not in lengths:
                self._warn_once(
                    "labels",
                    f"AttentionMonitor: sample {s} has {len(labels)} token labels but the "
                    f"captured maps are {sorted(lengths)} tokens long; those axes show positions.",
                )
        if grid is not None:
            self._check_grids(records, grid)

    def _check_grids(self, records: list[AttentionMap], grid: PatchGrid) -> None:
        """The image's pictures: rollout needs one grid; overlays need a layer on the image's grid."""
        grids = sorted({g.grid for _, g in on_grids(records, grid)})
        if "rollout" in self.setup.plots and len(grids) > 1:
            shown = ", ".join(f"{rows}×{cols}" for rows, cols in grids)
            self._warn_once(
                "rollout",
                f"AttentionMonitor draws no attention rollout: the layers' tokens lie on {len(grids)} grids "
                f"({shown}; patch merging between stages), and rollout chains the maps of one sequence "
                "through every layer. The overlays are drawn per stage.",
            )
        if records and not any(r.weights.shape[-1] == grid.length for r in records):
            try:
                grid.split(records[0].length[-1])
            except ValueError as err:
                self._warn_once(
                    "grid",
                    "AttentionMonitor draws no image overlays: no captured layer matches the "
                    f"patch grid ({err}). Pass `image_grid=PatchGrid(...)` for the images you feed.",
                )

    def _drift(self, views: list[AttentionView], job: Job) -> dict[str, np.ndarray]:
        per_layer: dict[str, list[np.ndarray]] = {}
        for view in views:
            drift = self.history.add(view, job.step, job.epoch)
            if drift is not None:
                per_layer.setdefault(view.layer, []).append(drift)
        return {layer: np.mean(values, axis=0) for layer, values in per_layer.items()}

    def _pictures(
        self,
        out: Outputs,
        stored: list[AttentionView],
        views: list[AttentionView],
        records: list[AttentionMap],
        job: Job,
        stats: list[LayerStats],
        drift: dict[str, np.ndarray],
        evolving: list[AttentionView],
    ) -> list[Picture]:
        """Draws and encodes every picture kind into ``out``; returns the pictures drawn."""
        tags, previous = self.setup.tags, self.previous_stats
        drawn: list[Picture] = []
        groups = picture_groups(
            self.setup, self.history, stored, views, records, job, stats, drift, previous, evolving
        )
        for kind, draw in groups:
            pictures = self._step(f"drawing the {kind} pictures", draw) or []
            drawn += pictures
            for p in pictures:
                png = self._step(f"encoding the {kind} pictures", partial(encode_png, p.image))
                if png is not None:
                    tag = picture_tag(tags, p)
                    out.pictures.append(
                        EncodedPicture(
                            tag, p.kind, p.sample, p.layer, png, p.image.shape[1], p.image.shape[0]
                        )
                    )
        return drawn


def _inline(fn: Callable[[], Any]) -> Any:
    return fn()


def _stat_scalars(
    into: dict[str, float], tags: Tags, stats: list[LayerStats], drift: dict[str, np.ndarray], heads: bool
) -> None:
    """``attention_stats/<metric>/<layer>/mean`` (and each head with ``head_stats``), drift included."""
    for st in stats:
        values = {m: getattr(st, m) for m in LayerStats.METRICS}
        if st.layer in drift:
            values["drift"] = drift[st.layer]
        for metric, per_head in values.items():
            head_scalars(into, partial(tags.stat, metric, st.layer), per_head, np.mean, heads)


def _histograms(
    into: dict[str, np.ndarray], tags: Tags, records: list[AttentionMap], max_values: int = 1 << 20
) -> None:
    """Each layer's weights at visible positions (a fixed stride keeps ≤ ``max_values``)."""
    for r in records:
        values = r.weights
        if r.visible is not None:
            values = values[r.visible.expand_as(values)]
        values = values.flatten()
        values = values[torch.isfinite(values)]
        if values.numel():
            stride = max(1, values.numel() // max_values)
            into[tags.histogram(r.key)] = values[::stride].numpy()


def _labels(job: Job) -> tuple[list, list]:
    """The source and target (decoder) labels per sample, as lists."""
    return [None if x is None else list(x) for x in job.labels], [
        None if x is None else list(x) for x in job.target_labels
    ]
