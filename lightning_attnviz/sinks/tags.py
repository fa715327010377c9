"""Every name the monitor logs under, built in one place.

Tag plan (``<layer>`` is the capture key cleaned to ``[\\w.\\-/#]``, e.g. ``model.layers.0.self_attn`` or
``blocks.0.attn#1`` for a module's second call; two keys that clean to one name are told apart with a
digest of the key, :meth:`Tags.layer`;
a monitor given ``name="x"`` writes ``attention_x/...``, ``attention_stats_x/...`` and so on):

- ``attention/sample_<i>/<layer>/heatmap``: head-mean map, query × key, labelled with the tokens
- ``attention/sample_<i>/<layer>/head_<h>``: one head's map (heads chosen with ``heads=``)
- ``attention/sample_<i>/<layer>/heads``: every head of the layer and their mean, as a grid
- ``attention/sample_<i>/<layer>/arrows``: which token attends to which (top-k lines)
- ``attention/sample_<i>/<layer>/evolution``: the head-mean map at the last captures, side by side
- ``attention/sample_<i>/<layer>/overlay`` and ``.../overlay_heads``: attention over the image
- ``attention/sample_<i>/atlas``: every layer × head of the sample
- ``attention/sample_<i>/rollout``: attention rollout over the image
- ``attention/stats/<metric>``: per metric (``entropy_norm``, ``distance``, ``sink``, ``max_weight``,
  ``drift``) one layer × head matrix of the whole model, averaged over the fixed samples, with the
  change since the previous capture
- ``attention/modules``: text table of the attention modules, once per fit (and again when new
  layers appear); stored as ``attention/modules/text_summary``
- ``attention_stats/<metric>/<layer>/mean``: per layer, averaged over heads and the fixed samples;
  metrics ``entropy``, ``entropy_norm``, ``distance``, ``sink``, ``max_weight``, ``drift``. With
  ``head_stats=True`` also ``attention_stats/<metric>/<layer>/head_<h>``.
- ``attention_hist/<layer>``: histogram of the layer's weights at visible positions
- ``attention_health/max_logit/<layer>``: the largest scaled logit entering the layer's softmax at a
  visible position, over the fixed samples and heads (``.../head_<h>`` with ``head_stats``);
  ``attention_health/fidelity/<layer>``: max |captured weights · values − the model's attention
  output|; ``attention_health/value_sink/<layer>``: the sink share of value-weighted attention
- ``attention/stats/max_logit``: the largest logit per layer × head, as the other stats matrices
- ``attention/sample_<i>/<layer>/value_weighted``: ‖α_ij·f(v_j)‖ per head (Kobayashi et al. 2020)
- ``attention/sample_<i>/relevance``: gradient-weighted relevance (Chefer et al. 2021), opt-in
- ``attention_roles/<role>/<layer>/max``: the layer's strongest head's role score (``previous_token``,
  ``duplicate_token``, ``induction``, ``first_token``; ``.../head_<h>`` with ``head_stats``), and
  ``attention_roles/sink_rate``: the share of all heads whose first-token score exceeds 0.3; the
  layer × head matrices ``attention/stats/<role>``; ``attention/phase_changes``: text, at a capture
  where a head's role score jumped (see :mod:`lightning_attnviz.analysis.roles`)
- Attention tab records: ``sample_<i>/<layer>`` under the ``attnviz`` plugin, and per capture
  ``overview`` (every stats matrix) and, at steps the monitor marks, ``markers``.

A 12-layer model writes 6 × 12 = 72 scalar tags by default, and 4 × 12 + 1 = 49 of roles (12 × 12 × 10
more with ``head_stats``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from lightning_attnviz.analysis.roles import ROLES, SINK_EPSILON
from lightning_attnviz.analysis.views import LOGGED_METRICS

METRICS = LOGGED_METRICS


def clean(name: str) -> str:
    """A layer name as it appears in a tag (``#`` stays: a repeated call's key never meets a module
    whose name has ``_<n>`` in its place)."""
    return re.sub(r"[^\w.\-/#]", "_", name)


@dataclass(frozen=True)
class Tags:
    """The tags of one monitor; ``name`` keeps two monitors of one Trainer apart."""

    name: str | None = None
    _layers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)  # segment -> key

    def layer(self, key: str) -> str:
        """``key`` as a tag segment, never the same as another key's: the first key to clean to a
        name keeps it, a later one gets a digest of itself appended."""
        segment = clean(key)
        if self._layers.setdefault(segment, key) != key:
            segment = f"{segment}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
            self._layers.setdefault(segment, key)
        return segment

    def owner(self, segment: str) -> str | None:
        """The key that holds ``segment``, if any."""
        return self._layers.get(segment)

    def _prefix(self, base: str) -> str:
        return f"{base}_{self.name}" if self.name else base

    @property
    def pictures(self) -> str:
        return self._prefix("attention")

    @property
    def modules(self) -> str:
        return f"{self.pictures}/modules"

    @property
    def stats(self) -> str:
        return self._prefix("attention_stats")

    @property
    def hist(self) -> str:
        return self._prefix("attention_hist")

    @property
    def health_prefix(self) -> str:
        return self._prefix("attention_health")

    def health(self, metric: str, layer: str, head: int | None = None) -> str:
        """``attention_health/<metric>/<layer>`` (a layer's value) or ``.../head_<h>``."""
        tag = f"{self.health_prefix}/{metric}/{self.layer(layer)}"
        return tag if head is None else f"{tag}/head_{head}"

    @property
    def roles(self) -> str:
        return self._prefix("attention_roles")

    def role(self, role: str, layer: str, head: int | None = None) -> str:
        """``attention_roles/<role>/<layer>/max`` (the layer's strongest head) or ``.../head_<h>``."""
        return f"{self.roles}/{role}/{self.layer(layer)}/{'max' if head is None else f'head_{head}'}"

    @property
    def sink_rate(self) -> str:
        return f"{self.roles}/sink_rate"

    @property
    def phase_changes(self) -> str:
        return f"{self.pictures}/phase_changes"

    @property
    def captures_dir(self) -> str:
        return self._prefix("attention_captures")

    def picture(self, kind: str, sample: int, layer: str | None, head: int | None = None) -> str:
        base = f"{self.pictures}/sample_{sample}"
        if layer is None:
            return f"{base}/{kind}"
        return f"{base}/{self.layer(layer)}/{kind if head is None else f'head_{head}'}"

    def stats_picture(self, metric: str) -> str:
        """The layer × head matrix of one metric (one picture per capture, for the whole model)."""
        return f"{self.pictures}/stats/{metric}"

    def stat(self, metric: str, layer: str, head: int | None = None) -> str:
        return f"{self.stats}/{metric}/{self.layer(layer)}/{'mean' if head is None else f'head_{head}'}"

    def histogram(self, layer: str) -> str:
        return f"{self.hist}/{self.layer(layer)}"

    def tab(self, sample: int, layer: str) -> str:
        tag = f"sample_{sample}/{self.layer(layer)}"
        return f"{self.name}/{tag}" if self.name else tag

    @property
    def tab_overview(self) -> str:
        """The Attention tab's overview record: every layer × head stats matrix of a capture."""
        return f"{self.name}/overview" if self.name else "overview"

    @property
    def tab_markers(self) -> str:
        """The Attention tab's markers: texts attached to steps, drawn on the step slider."""
        return f"{self.name}/markers" if self.name else "markers"

    def layout(self, layers: list[str], head_stats: bool) -> dict:
        """TensorBoard's custom-scalars layout: per metric one chart of every layer's mean and per role
        one of every layer's strongest head, then one chart per layer whose title names what it draws
        (the layer's mean or strongest head, or its heads when per-head series are logged), and the
        sink rate. TensorBoard colours a chart's lines by run, so within one run the lines of a chart
        differ by marker only (its "Matches" list names each); a chart per layer names its line in
        its title."""
        layout: dict = {}
        for metric in METRICS:
            top = ("all layers (mean over heads)", "mean")
            layout[f"{self.stats} {metric}"] = self._charts(self.stats, metric, layers, head_stats, top)
        for role in ROLES:
            top = ("all layers (strongest head)", "max")
            layout[f"{self.roles} {role}"] = self._charts(self.roles, role, layers, head_stats, top)
        sink = rf"^{re.escape(self.sink_rate)}$"
        layout[f"{self.roles} sink_rate"] = {
            f"share of heads with first-token score > {SINK_EPSILON:g}": ["Multiline", [sink]]
        }
        return layout

    def _charts(
        self, base: str, name: str, layers: list[str], head_stats: bool, top: tuple[str, str]
    ) -> dict:
        """One chart of every layer's ``top[1]`` series, then one per layer: its heads, or its series."""
        charts = {top[0]: ["Multiline", [rf"^{re.escape(base)}/{name}/.*/{top[1]}$"]]}
        for layer in layers:
            prefix = re.escape(f"{base}/{name}/{self.layer(layer)}/")
            if head_stats:
                charts[f"{layer}: heads"] = ["Multiline", [f"^{prefix}head_\\d+$"]]
            else:
                what = top[0].split("(")[-1].rstrip(")")  # "mean over heads", "strongest head"
                charts[f"{layer}: {what}"] = ["Multiline", [f"^{prefix}{top[1]}$"]]
        return charts
