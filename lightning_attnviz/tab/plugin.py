"""The Attention tab: a TensorBoard dynamic plugin serving the maps AttentionMonitor writes.

Installed through the ``tensorboard_plugins`` entry point, so ``tensorboard --logdir ...`` shows the
tab with nothing to configure. It reads through ``context.data_provider`` (the legacy multiplexer is
``None`` under TensorBoard's default Rust data server). Maps are blob sequences, as TensorBoard's images
plugin stores pictures: listing steps reads blob references only, and ``map`` reads the one blob asked for.

Routes, under ``/data/plugin/attnviz/``:

- ``runs``: ``{run: [tag, ...]}``, sorted, the map tags only; a tag is ``sample_<i>/<layer>``.
- ``extras``: ``{run: {"overview": [tag, ...], "markers": [tag, ...]}}``, the run-level tags.
- ``steps?run=&tag=``: the steps with data, ascending.
- ``map?run=&tag=&step=``: one step's record, bytes as written (:mod:`lightning_attnviz.tab.record`).
- ``records?run=&tag=``: every kept step of an overview or markers tag, as one JSON array in step
  order (their records are small JSON; the per-head line over steps needs them all).
- ``static/<file>``: the frontend, ES modules and a stylesheet shipped in the package (no CDN:
  TensorBoard's security policy allows scripts, styles and fetches from TensorBoard itself only).

The summary metadata of each tag says its kind (:func:`lightning_attnviz.tab.record.kind_of`; tags
written before kinds existed are maps). Unknown runs, tags or steps answer 404
(``errors.NotFoundError``); a missing or malformed parameter answers 400
(``errors.InvalidArgumentError``). TensorBoard turns both into plain-text responses.

TensorBoard keeps a sample of the steps of each tag (10 by default; ``--samples_per_plugin attnviz=1000``
keeps more); the tab offers every step kept.
"""

from __future__ import annotations

import posixpath
from importlib import resources
from typing import Any

from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from lightning_attnviz.tab.record import PLUGIN_NAME, kind_of

_STATIC = "static"
_ENTRY = "index.js"
_ALL_STEPS = 1_000_000  # what the data provider kept is already bounded by --samples_per_plugin
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}


class AttentionPlugin(base_plugin.TBPlugin):
    """Serves the per-step attention maps of the fixed samples to the Attention tab."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._provider = context.data_provider

    def get_plugin_apps(self) -> dict[str, Any]:
        return {
            "/runs": self._serve_runs,
            "/steps": self._serve_steps,
            "/map": self._serve_map,
            "/extras": self._serve_extras,
            "/records": self._serve_records,
            f"/{_STATIC}/*": self._serve_static,
        }

    def is_active(self) -> bool:
        return False  # TensorBoard decides from data_plugin_names whether there is data

    def data_plugin_names(self) -> tuple[str, ...]:
        return (PLUGIN_NAME,)

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path=f"/{_STATIC}/{_ENTRY}", tab_name="Attention")

    # -- routes -----------------------------------------------------------------------------------
    # werkzeug annotates Request.application for plain functions (request -> response); it passes the
    # request as the last argument, so it serves methods too (its own comment says so): hence the
    # narrow ignores below.

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_runs(self, request: wrappers.Request) -> wrappers.Response:
        listing = self._list(request)
        body = {run: sorted(t for t, s in tags.items() if _kind(s) == "map") for run, tags in listing.items()}
        return http_util.Respond(
            request, {run: tags for run, tags in sorted(body.items()) if tags}, "application/json"
        )

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_extras(self, request: wrappers.Request) -> wrappers.Response:
        body = {}
        for run, tags in sorted(self._list(request).items()):
            kinds = {
                kind: sorted(t for t, s in tags.items() if _kind(s) == kind)
                for kind in ("overview", "markers")
            }
            if any(kinds.values()):
                body[run] = kinds
        return http_util.Respond(request, body, "application/json")

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_records(self, request: wrappers.Request) -> wrappers.Response:
        run, tag = _run_and_tag(request)
        series = self._list(request).get(run, {}).get(tag)
        if series is not None and _kind(series) == "map":
            raise errors.InvalidArgumentError(
                f"`records` serves overview and markers tags, {tag!r} holds maps"
            )
        ctx = plugin_util.context(request.environ)
        blobs = [
            self._provider.read_blob(ctx, blob_key=datum.values[0].blob_key)
            for datum in sorted(self._read(request, run, tag), key=lambda d: d.step)
            if datum.values
        ]
        return http_util.Respond(request, b"[" + b",".join(blobs) + b"]", "application/json")

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_steps(self, request: wrappers.Request) -> wrappers.Response:
        run, tag = _run_and_tag(request)
        steps = sorted(datum.step for datum in self._read(request, run, tag))
        return http_util.Respond(request, steps, "application/json")

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_map(self, request: wrappers.Request) -> wrappers.Response:
        run, tag = _run_and_tag(request)
        raw = request.args.get("step")
        try:
            step = int(raw or "")
        except ValueError:
            raise errors.InvalidArgumentError(f"`step` must be an integer, got {raw!r}") from None
        for datum in self._read(request, run, tag):
            if datum.step == step and datum.values:
                ctx = plugin_util.context(request.environ)
                blob = self._provider.read_blob(ctx, blob_key=datum.values[0].blob_key)
                return http_util.Respond(request, blob, "application/octet-stream")
        raise errors.NotFoundError(f"no step {step} for run {run!r}, tag {tag!r}")

    @wrappers.Request.application  # type: ignore[arg-type]
    def _serve_static(self, request: wrappers.Request) -> wrappers.Response:
        """A frontend file; anything outside ``static/`` (``..``, absolute paths) is not found."""
        wanted = request.path.split(f"/{_STATIC}/", 1)[-1]
        name = posixpath.normpath(wanted)
        if wanted.startswith("/") or "\\" in wanted or name.startswith((".", "/")) or "/" in name:
            raise errors.NotFoundError(f"no static file {wanted!r}")
        content_type = _TYPES.get(posixpath.splitext(name)[1])
        # Traversable.joinpath takes one part on Python 3.10
        source = resources.files("lightning_attnviz.tab").joinpath(_STATIC).joinpath(name)
        if content_type is None or not source.is_file():
            raise errors.NotFoundError(f"no static file {wanted!r}")
        return http_util.Respond(request, source.read_bytes(), content_type)

    # -- data -------------------------------------------------------------------------------------

    def _list(self, request: wrappers.Request) -> dict[str, Any]:
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        return self._provider.list_blob_sequences(ctx, experiment_id=experiment, plugin_name=PLUGIN_NAME)

    def _read(self, request: wrappers.Request, run: str, tag: str) -> list[Any]:
        """Blob references of every kept step of ``run``/``tag``, without reading the blobs."""
        if tag not in self._list(request).get(run, {}):
            raise errors.NotFoundError(f"no attention data for run {run!r}, tag {tag!r}")
        ctx = plugin_util.context(request.environ)
        found = self._provider.read_blob_sequences(
            ctx,
            experiment_id=plugin_util.experiment_id(request.environ),
            plugin_name=PLUGIN_NAME,
            downsample=_ALL_STEPS,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
        )
        return list(found.get(run, {}).get(tag, []))


def _kind(series: Any) -> str:
    """The kind a tag's summary metadata names (``map`` for tags written before kinds)."""
    return kind_of(getattr(series, "plugin_content", b"") or b"")


def _run_and_tag(request: wrappers.Request) -> tuple[str, str]:
    run, tag = request.args.get("run"), request.args.get("tag")
    if not run or not tag:
        raise errors.InvalidArgumentError(f"`run` and `tag` are required, got run={run!r}, tag={tag!r}")
    return run, tag
