"""The Attention tab: a TensorBoard dynamic plugin serving the maps AttentionMonitor writes.

Installed through the ``tensorboard_plugins`` entry point, so ``tensorboard --logdir ...`` shows the
tab with nothing to configure. It reads through ``context.data_provider`` (the legacy multiplexer is
``None`` under TensorBoard's default fast data server) and serves one step at a time as binary: a
JSON of many steps of full maps would be tens of MB.

Routes, under ``/data/plugin/attnviz/``:

- ``runs``: ``{run: [tag, ...]}``, sorted; a tag is ``sample_<i>/<layer>``.
- ``steps?run=&tag=``: the steps with data, ascending.
- ``map?run=&tag=&step=``: one step's record (format in :func:`lightning_attnviz.log.encode_map`).
- ``index.js``: the frontend, an ES module shipped in the package (no CDN: TensorBoard's security
  policy allows scripts and fetches from TensorBoard itself only).

Unknown runs, tags or steps answer 404.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.data import provider
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from lightning_attnviz.log import PLUGIN_NAME

_ALL_STEPS = 1_000_000  # read every step the data provider kept (see --samples_per_plugin)


class AttentionPlugin(base_plugin.TBPlugin):
    """Serves the per-step attention maps of the fixed samples to the Attention tab."""

    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self._provider = context.data_provider

    def get_plugin_apps(self) -> dict[str, Any]:
        return {"/runs": self._runs, "/steps": self._steps, "/map": self._map, "/index.js": self._index_js}

    def is_active(self) -> bool:
        return False  # TensorBoard decides from data_plugin_names whether there is data

    def data_plugin_names(self) -> tuple[str, ...]:
        return (PLUGIN_NAME,)

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/index.js", tab_name="Attention")

    # -- routes -----------------------------------------------------------------------------------

    @wrappers.Request.application
    def _runs(self, request: wrappers.Request) -> wrappers.Response:
        listing = self._list(request)
        body = {run: sorted(tags) for run, tags in sorted(listing.items())}
        return http_util.Respond(request, body, "application/json")

    @wrappers.Request.application
    def _steps(self, request: wrappers.Request) -> wrappers.Response:
        data, error = self._read(request)
        if error:
            return error
        return http_util.Respond(request, sorted(d.step for d in data), "application/json")

    @wrappers.Request.application
    def _map(self, request: wrappers.Request) -> wrappers.Response:
        data, error = self._read(request)
        if error:
            return error
        try:
            step = int(request.args.get("step", ""))
        except ValueError:
            return _not_found(request, f"`step` must be an integer, got {request.args.get('step')!r}")
        for datum in data:
            if datum.step == step:
                return http_util.Respond(request, datum.numpy.item(), "application/octet-stream")
        return _not_found(request, f"no step {step} for this run and tag")

    @wrappers.Request.application
    def _index_js(self, request: wrappers.Request) -> wrappers.Response:
        script = resources.files("lightning_attnviz").joinpath("static/index.js").read_bytes()
        return http_util.Respond(request, script, "application/javascript")

    # -- data -------------------------------------------------------------------------------------

    def _list(self, request: wrappers.Request) -> dict[str, Any]:
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        return self._provider.list_tensors(ctx, experiment_id=experiment, plugin_name=PLUGIN_NAME)

    def _read(self, request: wrappers.Request) -> tuple[list, wrappers.Response | None]:
        run, tag = request.args.get("run"), request.args.get("tag")
        if not run or not tag:
            return [], _not_found(request, "`run` and `tag` are required")
        if tag not in self._list(request).get(run, {}):
            return [], _not_found(request, f"no attention data for run {run!r}, tag {tag!r}")
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        found = self._provider.read_tensors(
            ctx,
            experiment_id=experiment,
            plugin_name=PLUGIN_NAME,
            downsample=_ALL_STEPS,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
        )
        return found.get(run, {}).get(tag, []), None


def _not_found(request: wrappers.Request, message: str) -> wrappers.Response:
    return http_util.Respond(request, json.dumps({"error": message}), "application/json", code=404)
