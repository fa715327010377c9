"""Head roles: every score against TransformerLens's own functions (when installed) and against the
published definitions written out here; heads whose roles are fixed by their masks; padding; tags,
pictures and the phase-change rule through a real Trainer, across a resume."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_models import make_trainer, read_events
from matplotlib.image import imread
from models import GPT, GPTConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_attnviz import AttentionMonitor, capture_attention
from lightning_attnviz.analysis.roles import (
    ROLES,
    SINK_EPSILON,
    RoleHistory,
    role_scores,
    token_patterns,
)
from lightning_attnviz.capture.inputs import compute
from lightning_attnviz.capture.samples import sample_token_ids
from lightning_attnviz.sinks.tags import Tags
from lightning_attnviz.tab.record import decode_markers

try:  # TransformerLens's own functions, when installed; the published definitions below always run
    from transformer_lens import head_detector as TL
except ImportError:
    TL = None

TOKEN_ROLES = ("previous_token", "duplicate_token", "induction")


# -- references -------------------------------------------------------------------------------------


def published_pattern(role: str, ids: np.ndarray) -> np.ndarray:
    """The detection patterns as TransformerLens's head_detector defines them, written out cell by cell."""
    n = len(ids)
    p = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1):  # every pattern is lower-triangular
            if role == "previous_token":
                p[i, j] = j == i - 1
            elif role == "duplicate_token":
                p[i, j] = j < i and ids[j] == ids[i]
            elif role == "induction":  # the key after an earlier occurrence of the query's token
                p[i, j] = j >= 1 and j - 1 < i and ids[j - 1] == ids[i]
            else:  # first_token: the first key
                p[i, j] = j == 0
    return p


def reference_scores(maps: torch.Tensor, ids: np.ndarray | None) -> dict[str, np.ndarray]:
    """``sum(A ⊙ P) / sum(A)`` per head, averaged over samples, in float64 from dense patterns.

    Shape:
        maps: ``(samples, heads, T, T)``; ids ``(samples, T)``.
    """
    out = {}
    for role in ROLES if ids is not None else ("first_token",):
        per = []
        for s, a in enumerate(maps.double().numpy()):
            p = published_pattern(role, ids[s] if ids is not None else np.zeros(a.shape[-1], int))
            per.append((a * p).sum((-2, -1)) / a.sum((-2, -1)))
        out[role] = np.mean(per, axis=0)
    return out


def transformer_lens_scores(maps: torch.Tensor, ids: np.ndarray) -> dict[str, np.ndarray]:
    """TransformerLens's own patterns and default score (``mul``, no exclusions), averaged over samples;
    nothing when it is not installed."""
    if TL is None:
        return {}
    make = {
        "previous_token": TL.get_previous_token_head_detection_pattern,
        "duplicate_token": TL.get_duplicate_token_head_detection_pattern,
        "induction": TL.get_induction_head_detection_pattern,
    }
    out = {}
    for role, pattern in make.items():
        per = [
            [
                TL.compute_head_attention_similarity_score(
                    a[h].clone(),
                    pattern(torch.as_tensor(ids[s])[None]),
                    exclude_bos=False,
                    exclude_current_token=False,
                    error_measure="mul",
                )
                for h in range(a.shape[0])
            ]
            for s, a in enumerate(maps)
        ]
        out[role] = np.mean(per, axis=0)
    return out


def repeated_ids(samples: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Random tokens with one segment copied later in the sequence, as induction needs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (samples, length), generator=g)
    half = length // 3
    ids[:, -half:] = ids[:, 1 : 1 + half]
    return ids


def captured(model: nn.Module, *inputs) -> list:
    with torch.no_grad(), capture_attention(model, samples=len(inputs[0]), defer=True) as cap:
        model(*inputs)
    return [compute(p) for p in cap.pending]


# -- the scores -------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 7, 16])
def test_patterns_are_the_published_ones_and_transformer_lens_s(length):
    ids = torch.randint(0, 3, (1, length), generator=torch.Generator().manual_seed(length))  # many repeats
    for role, (rows, cols) in token_patterns(ids[0].numpy()).items():
        ours = np.zeros((length, length))
        ours[rows, cols] = 1
        np.testing.assert_array_equal(ours, published_pattern(role, ids[0].numpy()), err_msg=role)
        if TL is not None:
            theirs = getattr(TL, f"get_{role}_head_detection_pattern")(ids)
            np.testing.assert_array_equal(ours, theirs.numpy(), err_msg=role)


@pytest.mark.parametrize("vocab", [4, 32])
def test_scores_match_transformer_lens_and_the_published_definitions(vocab):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, n_head=4)).eval()
    ids = repeated_ids(3, 16, vocab, seed=vocab)
    for record in captured(model, ids):
        ours = role_scores(record, tuple(ids.numpy()))
        expected = reference_scores(record.weights, ids.numpy())
        for role in ROLES:
            np.testing.assert_allclose(ours[role], expected[role], atol=1e-6, err_msg=role)
        for role, theirs in transformer_lens_scores(record.weights, ids.numpy()).items():
            np.testing.assert_allclose(ours[role], theirs, atol=1e-6, err_msg=role)


class RoleAttention(nn.Module):
    """Four heads whose roles their masks fix, built from the token ids: head 0 may see only the previous
    token, head 1 only the token after an earlier occurrence of its own, head 2 only the first token, head
    3 every earlier token. A row with nothing to see attends to itself."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.causal_head0 = False  # head 0 sees every earlier token instead

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (t.view(B, L, 4, -1).transpose(1, 2) for t in self.qkv(x).split(D, dim=2))
        masks = role_masks(ids)
        if self.causal_head0:
            masks[:, 0] = torch.ones(L, L, dtype=torch.bool).tril()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=masks)
        return y.transpose(1, 2).reshape(B, L, D)


def role_masks(ids: torch.Tensor) -> torch.Tensor:
    """``(B, 4, L, L)`` bool: what each head of :class:`RoleAttention` may see."""
    B, L = ids.shape
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    earlier = torch.zeros(B, L, L, dtype=torch.bool)
    earlier[:, :, 1:] = ids[:, :, None] == ids[:, None, :-1]  # key j follows a copy of the query's token
    masks = torch.stack(
        [
            (j == i - 1).expand(B, L, L),
            earlier & (j <= i),
            (j == 0).expand(B, L, L),
            (j <= i).expand(B, L, L),
        ],
        dim=1,
    )
    alone = ~masks.any(-1, keepdim=True)
    return masks | (alone & (i == j))


class LitRoles(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.attn = RoleAttention()
        self.head = nn.Linear(16, 32)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(idx), idx))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]).flatten(0, 1), batch[1].flatten())

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):  # the attention stays as built: its scores are known at every capture
        return torch.optim.AdamW(self.head.parameters(), lr=1e-2)


def repeat_loader(seed: int) -> DataLoader:
    ids = repeated_ids(8, 12, 32, seed)
    return DataLoader(TensorDataset(ids, ids.roll(-1, 1)), batch_size=4)


def test_heads_with_known_roles_score_what_their_masks_fix():
    ids = repeated_ids(2, 12, 32, seed=3)
    model = LitRoles().eval()
    (record,) = captured(model, ids)
    s = role_scores(record, tuple(ids.numpy()))
    L = ids.shape[1]
    assert s["previous_token"][0] == pytest.approx((L - 1) / L)  # row 0 has no previous token
    rows_with_copy = [published_pattern("induction", x).any(1).mean() for x in ids.numpy()]
    assert s["induction"][1] == pytest.approx(np.mean(rows_with_copy), abs=1e-6)
    assert s["first_token"][2] == pytest.approx(1.0)
    assert s["first_token"][0] == pytest.approx(2 / L)  # rows 0 and 1 see the first token


def _padded(model: nn.Module, ids: torch.Tensor, lengths: list[int], left: bool) -> tuple:
    """The padded batch's record and each sample's unpadded record."""
    B, L = ids.shape
    real = (
        torch.arange(L)[None] >= (L - torch.tensor(lengths))[:, None]
        if left
        else (torch.arange(L)[None] < torch.tensor(lengths)[:, None])
    )
    (padded,) = captured(model, ids, real)
    alone = [captured(model, ids[b : b + 1, real[b]], real[b : b + 1, real[b]])[0] for b in range(B)]
    return padded, alone, real


class PaddedAttention(nn.Module):
    """Causal SDPA over token embeddings alone (no positions), padding hidden from every query."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.qkv = nn.Linear(16, 48)

    def forward(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        q, k, v = (t.view(B, L, 4, 4).transpose(1, 2) for t in self.qkv(self.embed(ids)).split(16, dim=2))
        mask = torch.ones(L, L, dtype=torch.bool).tril() & real[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("left", [False, True])
def test_padding_is_cut_from_both_axes(left):
    torch.manual_seed(1)
    model = PaddedAttention().eval()
    ids, lengths = repeated_ids(3, 12, 8, seed=5), [12, 9, 6]
    padded, alone, real = _padded(model, ids, lengths, left)
    ours = role_scores(padded, tuple(ids.numpy()))
    per_sample = [role_scores(a, (ids[b][real[b]].numpy(),)) for b, a in enumerate(alone)]
    for role in ROLES:
        expected = np.mean([p[role] for p in per_sample], axis=0)
        np.testing.assert_allclose(ours[role], expected, atol=1e-5, err_msg=role)


def test_a_map_without_token_ids_keeps_only_the_first_token():
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval()
    ids = repeated_ids(2, 16, 32, seed=1)
    for record in captured(model, ids):
        scores = role_scores(record, ())
        assert all(np.isnan(scores[role]).all() for role in TOKEN_ROLES)
        expected = reference_scores(record.weights, None)["first_token"]
        np.testing.assert_allclose(scores["first_token"], expected, atol=1e-6)


# -- the phase-change rule --------------------------------------------------------------------------


def _layer(**roles: list[float]) -> dict[str, dict[str, np.ndarray]]:
    return {"blocks.1": {role: np.array(v, dtype=np.float32) for role, v in roles.items()}}


def test_a_jump_is_said_once_with_its_head_role_and_steps():
    history = RoleHistory()
    series = [0.04, 0.05, 0.09, 0.25, 0.45, 0.47, 0.49]  # the best layer-1 head
    said = []
    for i, value in enumerate(series):
        said += history.update(250 * (i + 4), _layer(induction=[0.05, value], previous_token=[0.1, 0.1]))
    assert [(e.layer, e.head, e.role, e.step_from, e.step_to) for e in said] == [
        ("blocks.1", 1, "induction", 1000, 1750)
    ]
    assert said[0].score_from == pytest.approx(0.04) and said[0].score_to == pytest.approx(0.25)
    assert "head 1 of 'blocks.1' became an induction head between step 1000 and step 1750" in said[0].text


@pytest.mark.parametrize(
    "series",
    [
        [0.1, 0.13, 0.16, 0.19, 0.22, 0.25, 0.28, 0.31, 0.34],  # steady learning: 0.03 a capture
        [0.4, 0.5, 0.6, 0.7],  # a strong head getting stronger: not a new role
        [0.1, 0.22, 0.1, 0.22],  # noise below the jump
    ],
)
def test_no_phase_change_without_a_jump(series):
    history = RoleHistory()
    said = [e for i, v in enumerate(series) for e in history.update(i, _layer(first_token=[v]))]
    assert said == []


def test_nothing_is_said_for_the_sanity_check_and_a_resume_keeps_the_window(tmp_path):
    history = RoleHistory()
    assert history.update(0, _layer(induction=[0.02]), report=False) == []
    history.update(10, _layer(induction=[0.03]))
    path = tmp_path / "roles.pt"
    torch.save(history.state_dict(), path)
    resumed = RoleHistory()
    resumed.load_state_dict(torch.load(path, weights_only=True))  # what a checkpoint can hold
    (event,) = resumed.update(20, _layer(induction=[0.3]))
    assert (event.step_from, event.step_to) == (0, 20)
    assert resumed.update(30, _layer(induction=[0.6])) == []  # said once
    torch.save(resumed.state_dict(), path)
    again = RoleHistory()
    again.load_state_dict(torch.load(path, weights_only=True))
    assert again.update(40, _layer(induction=[0.02])) == []
    assert again.update(50, _layer(induction=[0.9])) == []


# -- through a Trainer ------------------------------------------------------------------------------


def _scalar(events, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _captures(events, layer: str = "attn") -> list[int]:
    """The steps of the fit's captures, as the other statistics were logged at."""
    return [e.step for e in events.Scalars(f"attention_stats/entropy/{layer}/mean")]


def test_fit_logs_every_heads_scores_max_sink_rate_and_pictures(tmp_path):
    monitor = AttentionMonitor(plots=["stats"], head_stats=True)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    model = LitRoles()
    trainer.fit(model, repeat_loader(0), repeat_loader(1))
    events = read_events(trainer.logger.log_dir)
    fixed = next(iter(repeat_loader(1)))[0][:2]
    (record,) = captured(model.eval(), fixed)  # the last capture saw these weights
    expected = reference_scores(record.weights, fixed.numpy())
    expected.update(transformer_lens_scores(record.weights, fixed.numpy()))
    firsts, steps = [], _captures(events)
    assert len(steps) == 2
    for role in ROLES:
        heads = [_scalar(events, f"attention_roles/{role}/attn/head_{h}") for h in range(4)]
        assert all([s for s, _ in series] == steps for series in heads), role
        last = np.array([series[-1][1] for series in heads])
        np.testing.assert_allclose(last, expected[role], atol=1e-3, err_msg=role)
        top = _scalar(events, f"attention_roles/{role}/attn/max")
        assert [v for _, v in top] == pytest.approx([max(v[i][1] for v in heads) for i in range(2)])
        if role == "first_token":
            firsts = [[v[i][1] for v in heads] for i in range(2)]
    rate = [v for _, v in _scalar(events, "attention_roles/sink_rate")]
    assert rate == pytest.approx([np.mean(np.array(f) > SINK_EPSILON) for f in firsts])
    assert rate[-1] >= 0.25  # head 2 sees only the first token
    for role in ROLES:
        images = events.Images(f"attention/stats/{role}")
        assert [e.step for e in images] == steps
        assert imread(io.BytesIO(images[-1].encoded_image_string), format="png")[..., :3].std() > 0.05
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: c for c in layout.category}["attention_roles induction"].chart
    assert [list(c.multiline.tag) for c in charts] == [
        [r"^attention_roles/induction/.*/max$"],
        [r"^attention_roles/induction/attn/head_\d+$"],
    ]


class Switching(LitRoles):
    """Head 0 sees every earlier token until ``switch_epoch``, then only the previous one: a known
    phase change."""

    def __init__(self, switch_epoch: int) -> None:
        super().__init__()
        self.switch_epoch = switch_epoch

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.attn.causal_head0 = self.current_epoch < self.switch_epoch
        return super().forward(idx)


def _fit(tmp_path, model, epochs, ckpt=None):
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    monitor = AttentionMonitor(plots=["heatmap"])
    trainer = make_trainer(
        tmp_path, [monitor, checkpoint], logger=logger, max_epochs=epochs, enable_checkpointing=True
    )
    trainer.fit(model, repeat_loader(0), repeat_loader(1), ckpt_path=ckpt)
    return trainer


def test_a_phase_change_is_warned_once_in_text_and_survives_a_resume(tmp_path):
    _fit(tmp_path, Switching(switch_epoch=2), 2)  # two uniform captures, then a checkpoint
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("AttentionMonitor")]
    saved = state["pipeline"]["roles"]["layers"] if state["pipeline"] else []
    in_flight = len(state.get("inflight") or [])
    assert sum(e["scores"].shape[0] for e in saved) + in_flight == 2  # a few numbers per head, no maps
    assert all(e["scores"].shape[1:] == (len(ROLES), 4) for e in saved)
    pattern = (
        r"phase change at step (\d+): head 0 of 'attn' became a previous-token head between step (\d+) "
        r"and step \1: its previous_token score rose from 0\.\d\d to 0\.92"
    )
    with pytest.warns(RuntimeWarning, match=pattern) as record:
        trainer = _fit(tmp_path, Switching(switch_epoch=2), 4, ckpt=tmp_path / "ckpt" / "last.ckpt")
    (said,) = [str(w.message) for w in record if "phase change" in str(w.message)]
    events = read_events(trainer.logger.log_dir)
    steps = _captures(events)
    assert len(steps) == 4
    # switched at the third capture, measured from the first: the window crossed the resume
    assert re.search(pattern, said).groups() == (str(steps[2]), str(steps[0]))
    (text,) = events.Tensors("attention/phase_changes/text_summary")
    assert text.step == steps[2]
    table = text.tensor_proto.string_val[0].decode()
    row = rf"\| attn \| 0 \| previous_token \| {steps[0]} → {steps[2]} \| 0\.\d\d → 0\.92 \|"
    assert re.search(row, table), table
    (markers,) = events.Tensors(Tags().tab_markers)
    assert markers.step == steps[2]
    (marker,) = decode_markers(markers.tensor_proto.string_val[0])
    became = f"head 0 of 'attn' became a previous-token head between step {steps[0]} and step {steps[2]}"
    assert marker.step == steps[2] and marker.text.startswith(f"phase change: {became}")


def test_embeddings_given_directly_skip_the_token_roles_and_say_so_once(tmp_path):
    class LitEmbedded(LitRoles):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ids = torch.zeros(x.shape[:2], dtype=torch.long)
            return self.head(self.attn(x, ids))

        def training_step(self, batch, batch_idx):
            return self(batch[0]).pow(2).mean()

    x = torch.randn(8, 10, 16)
    loader = DataLoader(TensorDataset(x, torch.zeros(8)), batch_size=4)
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["stats"])], max_epochs=2)
    trainer.fit(LitEmbedded(), loader, loader)
    events = read_events(trainer.logger.log_dir)
    scalars = events.Tags()["scalars"]
    assert not [t for t in scalars if t.startswith(tuple(f"attention_roles/{r}" for r in TOKEN_ROLES))]
    assert [s for s, _ in _scalar(events, "attention_roles/first_token/attn/max")] == _captures(events)
    assert "attention/stats/first_token" in events.Tags()["images"]
    assert "attention/stats/induction" not in events.Tags()["images"]
    (table,) = events.Tensors("attention/modules/text_summary")
    text = table.tensor_proto.string_val[0].decode()
    assert "`attn`: the samples have no token ids" in text and text.count("Role scores") == 1


class HFLikeAttention(PaddedAttention):
    """Padding hidden from every query, then rows with nothing to see attend to everything (as Hugging
    Face does for left padding): the padded columns are visible from the padded rows."""

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        q, k, v = (t.view(B, L, 4, 4).transpose(1, 2) for t in self.qkv(self.embed(ids)).split(16, dim=2))
        mask = torch.ones(L, L, dtype=torch.bool).tril() & attention_mask.bool()[:, None, None, :]
        mask = mask | ~mask.any(-1, keepdim=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_an_attention_mask_marks_padding_that_padded_rows_see():
    torch.manual_seed(2)
    model = HFLikeAttention().eval()
    ids, lengths = repeated_ids(2, 12, 8, seed=7), [12, 7]
    real = torch.arange(12)[None] >= (12 - torch.tensor(lengths))[:, None]  # left padding
    fixed = {"input_ids": ids, "attention_mask": real.long()}
    marked = sample_token_ids(fixed, 2)
    assert [(x < 0).sum() for x in marked] == [0, 5]
    (padded,) = captured(model, ids, real.long())
    alone = [captured(model, ids[b : b + 1, real[b]], real[b : b + 1, real[b]].long())[0] for b in range(2)]
    ours = role_scores(padded, marked)
    for role in ROLES:
        expected = np.mean([role_scores(a, (ids[b][real[b]].numpy(),))[role] for b, a in enumerate(alone)], 0)
        np.testing.assert_allclose(ours[role], expected, atol=1e-5, err_msg=role)
    unmarked = role_scores(padded, tuple(ids.numpy()))  # without the mask the padding counts
    assert not np.allclose(unmarked["first_token"], ours["first_token"], atol=1e-3)


def test_the_pipeline_hands_phase_changes_on_as_typed_events(tmp_path):
    """What the Attention tab's step-slider markers are made from: ``Outputs.phase_changes``."""
    from lightning_attnviz.analysis.roles import PhaseChange
    from lightning_attnviz.pipeline.messages import Job, Setup
    from lightning_attnviz.pipeline.run import Pipeline

    model, ids, tag = LitRoles().eval(), repeated_ids(2, 12, 32, seed=4), Tags().phase_changes
    pipeline = Pipeline(Setup(AttentionMonitor().config, ("stats",), None, Tags(), None))
    outputs = []
    for step, causal in ((10, True), (20, True), (30, False), (40, False)):
        model.attn.causal_head0 = causal
        with torch.no_grad(), capture_attention(model, samples=2, defer=True, stats=True) as cap:
            model(ids)
        job = Job(step, 0, tuple(cap.pending), (None, None), (), True, token_ids=tuple(ids.numpy()))
        out, said = pipeline.run(job)
        outputs.append((out, said))
    assert [len(out.phase_changes) for out, _ in outputs] == [0, 0, 1, 0]
    (event,) = outputs[2][0].phase_changes
    assert isinstance(event, PhaseChange)
    where = (event.step_from, event.step_to, event.layer, event.head, event.role)
    assert where == (10, 30, "attn", 0, "previous_token")
    assert event.score_to == pytest.approx(11 / 12) and event.text in outputs[2][1][0]
    assert [tag in out.text for out, _ in outputs] == [False, False, True, False]
    markers = [[blob for kind, _, blob in out.tab_extra if kind == "markers"] for out, _ in outputs]
    assert [len(m) for m in markers] == [0, 0, 1, 0]
    assert decode_markers(markers[2][0])[0].text == f"phase change: {event.text}"
