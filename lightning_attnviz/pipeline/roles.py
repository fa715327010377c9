"""The drawing side of head roles: score every layer of a capture, log the scores, and say the phase
changes (a warning, a text tag and typed events for the Attention tab's step slider). The maths is
:mod:`lightning_attnviz.analysis.roles`; the pipeline runs this as a step of its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import numpy as np

from lightning_attnviz.analysis.roles import ROLES, PhaseChange, RoleHistory, role_scores, sink_rate
from lightning_attnviz.analysis.views import LayerStats
from lightning_attnviz.capture.inputs import AttentionMap
from lightning_attnviz.pipeline.messages import Job
from lightning_attnviz.sinks.base import Outputs, head_scalars
from lightning_attnviz.sinks.tags import Tags

MAX_LISTED = 6  # heads named in one warning; the text tag lists them all


def score_roles(records: Sequence[AttentionMap], job: Job) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {role: (heads,)}}`` for every record of the capture."""
    return {r.key: role_scores(r, job.token_ids) for r in records}


def roles_step(
    history: RoleHistory,
    out: Outputs,
    tags: Tags,
    head_stats: bool,
    stats: Sequence[LayerStats],
    records: Sequence[AttentionMap],
    job: Job,
) -> tuple[list[LayerStats], list[str]]:
    """The capture's statistics with their role scores, the scalars logged, and the warnings to raise.

    Phase changes are looked for only in captures that diagnose (not the sanity check)."""
    scores = score_roles(records, job)
    role_scalars(out.scalars, tags, scores, head_stats)
    events = history.update(job.step, scores, report=job.diagnose)
    mark_phase_changes(out, tags, events)
    # mypy's dataclass plugin: a **dict could name `layer` (a str); the keys are role names (ROLES), arrays
    scored = [
        replace(st, **scores[st.layer]) if st.layer in scores else st  # type: ignore[arg-type]
        for st in stats
    ]
    return scored, phase_change_messages(events, job.step, tags)


def role_scalars(
    into: dict[str, float], tags: Tags, scores: dict[str, dict[str, np.ndarray]], heads: bool
) -> None:
    """``attention_roles/<role>/<layer>/max`` (the layer's strongest head), each head with ``heads``,
    and ``attention_roles/sink_rate``; NaN values are skipped."""
    for layer, per_role in scores.items():
        for role in ROLES:
            values = np.asarray(per_role.get(role, ()), dtype=np.float64)
            head_scalars(into, partial(tags.role, role, layer), values, np.max, heads)
    rate = sink_rate(list(scores.values()))
    if rate is not None:
        into[tags.sink_rate] = rate


def mark_phase_changes(out: Outputs, tags: Tags, events: Sequence[PhaseChange]) -> None:
    """The hook where phase changes leave a capture: the ``attention/phase_changes`` text, and the typed
    events in ``out.phase_changes``, from which the Attention tab's step-slider markers are made
    (:func:`marker_texts`, written with the tab's records)."""
    if not events:
        return
    out.phase_changes.extend(events)
    rows = "".join(
        f"| {e.layer} | {e.head} | {e.role} | {e.step_from} → {e.step_to} | "
        f"{e.score_from:.2f} → {e.score_to:.2f} |\n"
        for e in events
    )
    out.text[tags.phase_changes] = "| layer | head | role | steps | score |\n|---|---|---|---|---|\n" + rows


def marker_texts(events: Sequence[PhaseChange]) -> list[str]:
    """The Attention tab's markers for a capture's phase changes: one per layer and role, naming the heads."""
    groups: dict[tuple[str, str], list[PhaseChange]] = {}
    for e in events:
        groups.setdefault((e.layer, e.role), []).append(e)
    texts = []
    for (layer, role), same in groups.items():
        if len(same) == 1:
            texts.append(f"phase change: {same[0].text}")
            continue
        heads = ", ".join(str(e.head) for e in same)
        low, high = ([getattr(e, f) for e in same] for f in ("score_from", "score_to"))
        texts.append(
            f"phase change: heads {heads} of {layer!r} became {role.replace('_', '-')} heads between step "
            f"{min(e.step_from for e in same)} and step {same[0].step_to}: {role} scores "
            f"{min(low):.2f}–{max(low):.2f} → {min(high):.2f}–{max(high):.2f}"
        )
    return texts


def phase_change_messages(events: Sequence[PhaseChange], step: int, tags: Tags) -> list[str]:
    """One warning for the phase changes of a capture, naming each head (the first few)."""
    if not events:
        return []
    listed = "; ".join(e.text for e in events[:MAX_LISTED])
    more = len(events) - MAX_LISTED
    rest = f"; and {more} more" if more > 0 else ""
    return [
        f"AttentionMonitor: phase change at step {step}: {listed}{rest} (listed in the "
        f"{tags.phase_changes!r} text; the rule is in docs/roles.md)."
    ]
