"""Which heads have become what: role scores per head on the fixed samples' exact maps, and the phase
changes in them over training.

The token roles are TransformerLens's (``transformer_lens.head_detector``): a detection pattern ``P``
built from the sample's token ids, scored with its default measure ``sum(A ⊙ P) / sum(A)`` (the share
of the head's attention mass that falls on the pattern; no BOS or current-token exclusion):

- ``previous_token``: ``P[i, i-1] = 1``;
- ``duplicate_token``: ``P[i, j] = 1`` for ``j < i`` with ``token[j] == token[i]``;
- ``induction``: ``P[i, j] = 1`` for ``j ≤ i`` with ``token[j-1] == token[i]`` (the token after an
  earlier occurrence of the current one; Olsson et al. 2022).

``first_token`` is the mean attention to the first key (Gu et al., ICLR 2025, "When attention sink
emerges in language models": a head is a sink head when it exceeds ε = 0.3), measured the same way
with ``P`` the first column. Scores are taken over the visible part of each sample's map (keys that no
query may see, i.e. padding, are cut from both axes) and averaged over the samples, as
``detect_head`` averages over prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_attnviz.analysis.views import LayerStats
from lightning_attnviz.capture.inputs import AttentionMap

ROLES: tuple[str, ...] = LayerStats.ROLES
TOKEN_ROLES: tuple[str, ...] = ("previous_token", "duplicate_token", "induction")
SINK_EPSILON = 0.3  # Gu et al. 2025: a head whose mean attention to the first token exceeds this is a sink

# The phase-change rule (docs/roles.md): a head's score rose by at least PHASE_JUMP over the lowest of
# its scores at the previous PHASE_WINDOW captures, to at least PHASE_RATIO times that lowest score.
# 0.15 rather than 0.2: an induction score cannot exceed the share of query rows that have an earlier
# occurrence of their token, about a quarter in the demo's samples; noise between captures is ~0.02.
PHASE_JUMP = 0.15
PHASE_WINDOW = 4
PHASE_RATIO = 2.0  # the head became something it was not, rather than a strong head getting stronger


def token_patterns(ids: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ones of TransformerLens's three detection patterns for one sequence, as ``(rows, cols)``.

    Shape:
        ids: ``(T,)`` integer token ids; each index array ``(n,)``.
    """
    n = len(ids)
    same = np.tril(ids[:, None] == ids[None, :], -1)  # duplicate: an earlier occurrence of the token
    rows, cols = np.nonzero(same)
    return {
        "previous_token": (np.arange(1, n), np.arange(n - 1)),
        "duplicate_token": (rows, cols),
        # TransformerLens rolls the duplicate pattern one key to the right and zeroes column 0; as
        # cols < rows ≤ T-1, nothing wraps round and every shifted one stays on or below the diagonal
        "induction": (rows, cols + 1),
    }


def token_roles_skipped(record: AttentionMap, ids: Sequence[np.ndarray | None]) -> str | None:
    """Why the token roles cannot be scored on ``record`` (``None``: they can)."""
    samples, _, q_len, k_len = record.weights.shape
    if not ids or all(x is None for x in ids):
        return "the samples have no token ids (images, or embeddings given directly)"
    if record.block != (1, 1):
        return "the map was pooled while capturing (longer than store_tokens)"
    if tuple(record.axes) != ("source", "source") or q_len != k_len:
        return "queries and keys are not the same token sequence (cross-attention or decoder tokens)"
    lengths = {len(x) for x in ids[:samples] if x is not None}
    if len(ids) < samples or any(x is None for x in ids[:samples]) or lengths != {k_len}:
        return f"the maps are {k_len} tokens long, the token ids {sorted(lengths)}"
    return None


def role_scores(record: AttentionMap, ids: Sequence[np.ndarray | None] = ()) -> dict[str, np.ndarray]:
    """Each role's score per head, averaged over the samples; NaN where a role is not scored.

    ``ids``: per sample, the token ids, ``-1`` where the batch's attention mask marks padding. A map
    pooled while capturing keeps only ``first_token``, from the row statistics when they count the
    first key alone.

    Shape:
        record.weights: ``(samples, heads, q, k)``; every array of the result ``(heads,)`` float32.
    """
    samples, heads = record.weights.shape[:2]
    out = {role: np.full(heads, np.nan, dtype=np.float32) for role in ROLES}
    if record.block != (1, 1):
        if record.stats is not None and record.stats.sink_keys == 1:
            out["first_token"] = record.stats.per_head()["sink"]
        return out
    tokens = token_roles_skipped(record, ids) is None
    per_sample = [
        _sample_scores(record, s, ids[s] if s < len(ids) else None, tokens) for s in range(samples)
    ]
    for role in ROLES:
        values = [p[role] for p in per_sample if role in p]
        if values:
            stacked = np.stack(values)  # (samples, heads)
            finite = np.isfinite(stacked)
            total = np.where(finite, stacked, 0.0).sum(0)
            count = finite.sum(0)
            out[role] = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
    return out


def _sample_scores(
    record: AttentionMap, sample: int, ids: np.ndarray | None, tokens: bool
) -> dict[str, np.ndarray]:
    """One sample's ``sum(A ⊙ P) / sum(A)`` per head and role, over its real positions."""
    w = record.weights[sample]  # (H, q, k)
    square = w.shape[-2] == w.shape[-1] and record.axes[0] == record.axes[1]
    real = _real_positions(record, sample)
    if ids is not None and len(ids) == w.shape[-1] and square and bool((ids < 0).any()):
        marked = torch.from_numpy(np.asarray(ids) >= 0)  # the attention mask's word, where it was given
        real = marked if real is None else real & marked
    if real is not None:  # self-attention loses the padding's rows too
        keep = real.nonzero().squeeze(-1)
        w = w[:, keep][..., keep] if square else w[..., keep]
        ids = None if ids is None or not square else np.asarray(ids)[keep.numpy()]
    if w.shape[-1] == 0:
        return {}
    rows = w.sum(-1)  # (H, q)
    if not bool(torch.isfinite(rows).all()):  # rows with NaN/inf are left out, as in the stats
        w = torch.where(torch.isfinite(w).all(-1, keepdim=True), w, 0.0)
        rows = w.sum(-1)
    total = rows.sum(-1, dtype=torch.float64)  # (H,)
    scores = {"first_token": w[..., 0].sum(-1, dtype=torch.float64) / total}
    if tokens and ids is not None:
        for role, (row_ids, col_ids) in token_patterns(np.asarray(ids)).items():
            r, c = torch.from_numpy(row_ids), torch.from_numpy(col_ids)
            scores[role] = w[:, r, c].sum(-1, dtype=torch.float64) / total
    return {role: v.numpy() for role, v in scores.items()}


def _real_positions(record: AttentionMap, sample: int) -> Tensor | None:
    """bool ``(k,)``: the keys some query of ``sample`` may see (``None``: all); a key no query sees is
    padding."""
    if record.visible is None:
        return None
    v = record.visible.reshape((1,) * (4 - record.visible.dim()) + tuple(record.visible.shape))
    v = v[sample if v.shape[0] > 1 else 0]  # (1 | H, 1 | q, k | 1)
    seen = v.any(dim=0).any(dim=0)  # (k | 1,)
    return None if bool(seen.all()) else seen.expand(record.weights.shape[-1])


def sink_rate(scores: Sequence[Mapping[str, np.ndarray]], epsilon: float = SINK_EPSILON) -> float | None:
    """The share of all scored heads whose ``first_token`` score exceeds ``epsilon`` (``None``: none)."""
    values = np.concatenate([np.asarray(s.get("first_token", ()), dtype=np.float64).ravel() for s in scores])
    values = values[np.isfinite(values)]
    return float((values > epsilon).mean()) if values.size else None


def roles_note(records: Sequence[AttentionMap], ids: Sequence[np.ndarray | None]) -> str:
    """The module table's line on the token roles: which layers they are skipped for, and why."""
    why: dict[str, list[str]] = {}
    for r in records:
        reason = token_roles_skipped(r, ids)
        if reason is not None:
            why.setdefault(reason, []).append(r.key)
    if not why:
        return ""
    parts = [f"{', '.join(f'`{k}`' for k in keys)}: {reason}" for reason, keys in why.items()]
    return (
        "\nRole scores: `previous_token`, `duplicate_token` and `induction` need the samples' token ids and "
        "are skipped for " + "; ".join(parts) + ". `first_token` is scored for every layer.\n"
    )


_NOUN = {
    "previous_token": "a previous-token head",
    "duplicate_token": "a duplicate-token head",
    "induction": "an induction head",
    "first_token": "a first-token (sink) head",
}


@dataclass(frozen=True)
class PhaseChange:
    """A head whose role score jumped (the rule: :data:`PHASE_JUMP`, :data:`PHASE_WINDOW`,
    :data:`PHASE_RATIO`), between the capture at ``step_from`` and the one at ``step_to``."""

    step_from: int
    step_to: int
    layer: str
    head: int
    role: str
    score_from: float
    score_to: float
    text: str = ""

    @classmethod
    def of(
        cls, step_from: int, step_to: int, layer: str, head: int, role: str, low: float, now: float
    ) -> PhaseChange:
        text = (
            f"head {head} of {layer!r} became {_NOUN.get(role, role)} between step {step_from} and step "
            f"{step_to}: its {role} score rose from {low:.2f} to {now:.2f}"
        )
        return cls(step_from, step_to, layer, head, role, low, now, text)


@dataclass
class _Past:
    steps: list[int] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)  # (roles, heads) per capture, oldest first


class RoleHistory:
    """Each layer's role scores at its last :data:`PHASE_WINDOW` captures (a few numbers per head),
    and the phase changes already said (each head and role once per fit)."""

    def __init__(self, window: int = PHASE_WINDOW, jump: float = PHASE_JUMP, ratio: float = PHASE_RATIO):
        self.window, self.jump, self.ratio = window, jump, ratio
        self._past: dict[str, _Past] = {}
        self.reported: set[tuple[str, str, int]] = set()  # (role, layer, head)

    def update(
        self, step: int, scores: Mapping[str, Mapping[str, np.ndarray]], report: bool = True
    ) -> list[PhaseChange]:
        """Record this capture's ``{layer: {role: (heads,)}}``; the phase changes it shows (none
        without ``report``: the sanity check, or a capture replayed after a resume)."""
        events = []
        for layer, per_role in scores.items():
            heads = max((np.asarray(v).size for v in per_role.values()), default=0)
            now = np.full((len(ROLES), heads), np.nan)
            for i, role in enumerate(ROLES):
                value = np.asarray(per_role.get(role, ()), dtype=np.float64).ravel()
                now[i, : value.size] = value
            past = self._past.setdefault(layer, _Past())
            if past.scores and past.scores[-1].shape != now.shape:
                past.steps, past.scores = [], []  # the layer changed shape: start over
            if report and past.scores:
                events += self._changes(layer, past, now, step)
            past.steps = [*past.steps, step][-self.window :]
            past.scores = [*past.scores, now.astype(np.float32)][-self.window :]
        return events

    def _changes(self, layer: str, past: _Past, now: np.ndarray, step: int) -> list[PhaseChange]:
        before = np.stack(past.scores).astype(np.float64)  # (captures, roles, heads)
        filled = np.where(np.isfinite(before), before, np.inf)
        low, at = filled.min(0), filled.argmin(0)
        with np.errstate(invalid="ignore"):
            hit = np.isfinite(low) & np.isfinite(now) & (now - low >= self.jump) & (now >= self.ratio * low)
        events = []
        for r, h in zip(*np.nonzero(hit), strict=True):
            key = (ROLES[r], layer, int(h))
            if key not in self.reported:
                self.reported.add(key)
                events.append(
                    PhaseChange.of(past.steps[at[r, h]], step, layer, int(h), ROLES[r], low[r, h], now[r, h])
                )
        return events

    def state_dict(self) -> dict[str, Any]:
        return {
            "layers": [
                {"layer": layer, "steps": list(p.steps), "scores": torch.from_numpy(np.stack(p.scores))}
                for layer, p in self._past.items()
                if p.scores
            ],
            "reported": [list(k) for k in sorted(self.reported)],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._past = {
            e["layer"]: _Past(list(e["steps"])[-self.window :], list(e["scores"].numpy())[-self.window :])
            for e in state.get("layers", [])
        }
        self.reported = {
            (str(role), str(layer), int(head)) for role, layer, head in state.get("reported", [])
        }
