"""The Attention tab in a real browser: Debian's Chromium driven by playwright-core (tests/e2e).

The logs are written here with the record encoder (test_tb_plugin.write_demo_logs), not by a training
run, so the tab is tested on exactly the cases it must draw: causal and padded maps, repeated tokens,
a bidi control in a label, layer names out of lexicographic order and too long for the menu, an image,
two runs of the same layers, an overview and a marker, and a 2,048-token map. Colours read back from
the canvas are checked against the pictures' own colouring (render/scale.py) of the decoded record.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from test_tb_plugin import LAYERS, STEPS, _get, _tensorboard, _wait_for, write_demo_logs

from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.capture.blocks import plan_axis, pool
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.pipeline.plan import screen_blocks
from lightning_attnviz.render.scale import _DIFF_LUT, _LUT, MASKED_RGB, colorize
from lightning_attnviz.tab.record import decode_map, encode_map, tab_value

E2E = Path(__file__).parent / "e2e"
CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).parent.parent / "docs"
GRAY = list(MASKED_RGB)
LAST = "blocks.10.attn"  # the layer the tab opens on: the last in natural order


def _browser_or_skip() -> None:
    missing = [
        what
        for what, ok in (
            ("Debian's chromium", CHROMIUM.exists()),
            ("node", shutil.which("node") is not None),
            (
                "playwright-core (npm --prefix tests/e2e install)",
                (E2E / "node_modules" / "playwright-core").exists(),
            ),
        )
        if not ok
    ]
    if missing:
        message = f"browser test needs {', '.join(missing)}; scripts/test.sh installs them"
        if os.environ.get("ATTNVIZ_BROWSER_TEST") == "required":
            pytest.fail(message)
        pytest.skip(message)


def _drive(plugin_base: str, screenshot: Path, checks: dict | str) -> dict:
    """Run tests/e2e/attention_tab.mjs against the TensorBoard serving ``plugin_base``; its JSON summary."""
    root = plugin_base.rsplit("/data/plugin/", 1)[0]
    argument = checks if isinstance(checks, str) else json.dumps(checks)
    result = subprocess.run(
        ["node", str(E2E / "attention_tab.mjs"), root, str(screenshot), argument],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=E2E,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout[result.stdout.index("{") :])


def _keep(screenshot: Path, name: str) -> None:
    """Refresh a picture in docs/ from a run's screenshot: ATTNVIZ_SCREENSHOT=1."""
    if os.environ.get("ATTNVIZ_SCREENSHOT") and screenshot.exists():
        shutil.copy(screenshot, DOCS / name)


def _record(base: str, run: str, tag: str, step: int):
    query = urllib.parse.urlencode({"run": run, "tag": tag, "step": step})
    return decode_map(_get(f"{base}/map?{query}")[1])


def _mean(record) -> tuple[np.ndarray, np.ndarray | None]:
    """The head mean as the pictures take it, and where any head sees the key."""
    return record.weights.mean(axis=0), None if record.visible is None else record.visible.any(axis=0)


def _close(got: list[int], want, tolerance: int = 4) -> bool:
    """Within a colour table step: the tab places cells in float32, the pictures in float64."""
    return bool(np.abs(np.asarray(got, int) - np.asarray(want, int)).max() <= tolerance)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
    _browser_or_skip()
    logdir = tmp_path_factory.mktemp("tab")
    write_demo_logs(logdir, second_text=True)
    base = _tensorboard(logdir)
    _wait_for(lambda: len(json.loads(_get(f"{base}/runs")[1])) == 3)  # the first load runs in the background
    return base


def test_the_pictures_colour_scale_masks_positions_layers_bidi_and_images(demo, tmp_path):
    tag = f"sample_0/{LAST}"
    last, first = _record(demo, "text", tag, STEPS[-1]), _record(demo, "text", tag, STEPS[0])
    row = last.weights.mean(axis=0)[5]
    expected_line = f"\u2068i\u2069@3  {row[3]:.3f}"
    visible_cells = [[0, 5, 3], [0, 6, 2], [0, 9, 0], [0, 4, 1]]
    checks = {
        "scenario": "default",
        "hash": "&p.attnviz.run=text",
        "expected_topkey": expected_line,
        "hover_index": 5,
        "probe_cells": [[0, 0, 5], [0, 7, 8], *visible_cells],  # causal future, padding, visible
        "probe_cells_first": visible_cells,
        "bidi_index": 5,
        "vision_run": "vit",
    }
    screenshot = tmp_path / "attention_tab.png"
    summary = _drive(demo, screenshot, checks)
    assert summary["ok"] and summary["canvas_changed"], summary

    assert summary["layer"] == LAST  # opens on the last layer
    (option,) = [o for o in summary["layer_options"] if o["value"] == LAYERS[3]]
    assert option["title"] == LAYERS[3] and "…" in option["text"] and len(option["text"]) < len(LAYERS[3])
    assert summary["step_label"] == "step 9 · epoch 2" and summary["step_label_first"] == "step 3 · epoch 0"

    # every cell in the colour the pictures give it, at both steps: one scale, fixed across steps
    for cells, record in ((summary["cells"], last), (summary["cells_first"], first)):
        colours = colorize(*_mean(record))
        for key, rgb in cells.items():
            _, r, c = map(int, key.split(","))
            masked = record.visible is not None and not record.visible[0, r, c]
            assert rgb == GRAY if masked else _close(rgb, colours[r, c]), (key, rgb, colours[r, c])
    assert "1/n" in summary["scale_ticks"] and "uniform" in summary["scale_ticks"]
    assert "one-hot" in summary["scale_ticks"] and "log scale" in summary["scale_meaning"]
    # the linear view, chosen: the weight itself from 0 to 1
    weights = first.weights.mean(axis=0)
    for key, rgb in summary["cells_linear"].items():
        _, r, c = map(int, key.split(","))
        assert _close(rgb, _LUT[round(255 * float(weights[r, c]))]), (key, rgb)
    assert summary["scale_ticks_linear"].startswith("0")

    assert expected_line in summary["topkeys"].split("\n")  # positions tell the repeated "i" apart
    assert summary["token_text"] == "\u2068\u202etxt.exe\u2069"  # isolated: cannot reorder its neighbours
    assert summary["token_unicode_bidi"] == "isolate"
    vision = summary["vision"]
    assert vision["in_plot"] and vision["leads"], vision  # the picture leads, the heatmap follows
    assert vision["caption"].startswith("query 0 · \u2068CLS\u2069 → patches · hover a patch")
    assert "log scale" in vision["caption"]
    _keep(screenshot, "attention_tab.png")


def test_two_steps_their_change_every_head_and_two_runs(demo, tmp_path):
    tag = f"sample_0/{LAST}"
    early, late = _record(demo, "text", tag, 3), _record(demo, "text", tag, 9)
    other = _record(demo, "text_b", tag, 9)
    cells = [[5, 3], [6, 2], [9, 0], [4, 1], [8, 5]]
    checks = {
        "scenario": "compare",
        # the slider on the last step, compared with the first: the earlier is drawn on the left
        "hash": "&p.attnviz.run=text&p.attnviz.compare=steps&p.attnviz.step2=3",
        "probe_steps": [[n, r, c] for n in range(3) for r, c in cells],
        "hover_change": [5, 3],
        "probe_heads": [[h, r, c] for h in range(3) for r, c in cells],
        "probe_runs": [[n, r, c] for n in range(3) for r, c in cells],
        "other_run": "text_b",
    }
    screenshot = tmp_path / "compare.png"
    summary = _drive(demo, screenshot, checks)
    assert summary["ok"], summary
    assert summary["titles_steps"] == ["step 3 · epoch 0", "step 9 · epoch 2", "change: step 9 − step 3"]
    _assert_pair(summary["cells_steps"], early, late)
    assert (
        "red = more weight" in summary["change_meaning"] and "white = the same" in summary["change_meaning"]
    )
    assert "0" in summary["change_ticks"] and "more" in summary["change_ticks"]
    assert summary["cell_text_change"].startswith("change: step 9 − step 3: query 5")

    # every head as small multiples, then the mean; each head in its own colours
    assert summary["heads_panels"] >= 2
    for key, rgb in summary["cells_heads"].items():
        n, r, c = map(int, key.split(","))
        visible = None if late.visible is None else late.visible[0]
        want = colorize(*_mean(late))[r, c] if n == late.heads else colorize(late.weights[n], visible)[r, c]
        assert _close(rgb, want), (key, rgb, want)
    assert summary["after_head_click"] == {"head": "1", "compare": "none"}

    # two runs at the same step (head 1 is still chosen), and their change
    assert summary["run2"] == "text_b"
    assert summary["titles_runs"] == [
        "text · step 9 · epoch 2",
        "text_b · step 9 · epoch 2",
        "change: text_b − text",
    ]
    _assert_pair(summary["cells_runs"], late, other, head=1)
    _keep(screenshot, "attention_tab_steps.png")
    _keep(tmp_path / "compare-runs.png", "attention_tab_runs.png")


def _assert_pair(cells: dict, left, right, head: int | None = None) -> None:
    """Panels 0 and 1 coloured as the pictures colour ``left`` and ``right``, panel 2 their change on a
    diverging scale from −span to +span (span: the largest change over cells both show)."""

    def pick(record):
        if head is None:
            return _mean(record)
        return record.weights[head], None if record.visible is None else record.visible[0]

    (a, visible), (b, _) = pick(left), pick(right)
    diff = b.astype(np.float64) - a
    shown = np.ones_like(diff, bool) if visible is None else visible
    span = max(float(np.abs(diff[shown]).max()), 1e-6)
    for key, rgb in cells.items():
        n, r, c = map(int, key.split(","))
        if not shown[r, c]:
            assert rgb == GRAY, key
        elif n < 2:
            assert _close(rgb, colorize(*(pick(left) if n == 0 else pick(right)))[r, c]), (key, rgb)
        else:
            want = _DIFF_LUT[round((diff[r, c] / span + 1) * 127.5)]
            assert _close(rgb, want, 6), (key, rgb, want)


def test_a_shared_link_reproduces_the_view(demo, tmp_path):
    link = "&p.attnviz.run=text&p.attnviz.layer=blocks.2.attn&p.attnviz.head=1"
    checks = {"scenario": "address", "hash": link, "last_step": STEPS[-1]}
    summary = _drive(demo, tmp_path / "address.png", checks)
    assert summary["ok"], summary
    # opened as the link says
    assert summary["opened"] == {"run": "text", "layer": "blocks.2.attn", "head": "1",
                                 "step": "step 9 · epoch 2", "compare": "none"}  # fmt: skip
    url = urllib.parse.urlsplit(summary["shared_url"])
    params = dict(part.split("=", 1) for part in url.fragment.split("&")[1:])
    assert url.fragment.startswith("attnviz&")  # TensorBoard's own tab key stays first
    assert {k: urllib.parse.unquote(v) for k, v in params.items()} == {
        "p.attnviz.run": "text", "p.attnviz.sample": "sample_1", "p.attnviz.layer": "blocks.2.attn",
        "p.attnviz.head": "0", "p.attnviz.step": "3", "p.attnviz.scale": "linear",
        "p.attnviz.metric": "entropy_norm",
    }  # fmt: skip
    assert summary["second_view"] == summary["first_view"]
    assert summary["first_view"]["step"] == "step 3 · epoch 0" and summary["first_view"]["scale"] == "linear"
    assert summary["same_pixels"]


def test_the_overview_opens_a_head_and_markers_sit_on_the_slider(demo, tmp_path):
    checks = {"scenario": "overview", "hash": "&p.attnviz.run=text", "click_cell": [0, 1],
              "click_layer": "blocks.0.attn"}  # fmt: skip
    screenshot = tmp_path / "overview.png"
    summary = _drive(demo, screenshot, checks)
    assert summary["ok"], summary
    assert summary["metrics"] == ["entropy_norm", "sink"]  # what the overview records hold, no tab change
    assert summary["overview_title"] == "normalised attention entropy · step 9 · epoch 2"
    assert summary["markers"] == [{"index": "1", "title": "step 6: phase change: blocks.10.attn head 1"}]
    # a click on (layer 0, head 1) opened that head; its line has a point per step
    assert summary["after_click"] == {"layer": "blocks.0.attn", "head": "1"}
    assert summary["spark_points"] == str(len(STEPS))
    assert summary["step_at_marker"] == "step 6 · epoch 1"
    assert summary["marker_text"] == "◆ step 6: phase change: blocks.10.attn head 1"
    _keep(screenshot, "attention_tab_overview.png")


def test_a_2048_token_map_opens_downsampled_and_zooms_without_freezing(tmp_path, record_property):
    _browser_or_skip()
    n, heads = 2048, 2
    rng = np.random.default_rng(0)
    weights = rng.random((heads, n, n), dtype=np.float32) ** 8
    visible = np.tril(np.ones((n, n), bool))[None]
    weights[:, np.arange(n), np.maximum(np.arange(n) - 1, 0)] += 200  # the previous token, clearly
    weights = weights * visible
    weights /= weights.sum(-1, keepdims=True)
    labels = [f"t{i}" for i in range(n)]
    blob = encode_map(layer="gpt.h.0.attn", sample=0, step=10, epoch=1, weights=weights, visible=visible,
                      q_labels=labels, k_labels=labels)  # fmt: skip
    writer = EventFileWriter(str(tmp_path / "long"))
    value = tab_value("sample_0/gpt.h.0.attn", blob)
    writer.add_event(Event(step=10, wall_time=time.time(), summary=Summary(value=[value])))
    writer.close()
    base = _tensorboard(tmp_path)
    _wait_for(lambda: json.loads(_get(f"{base}/runs")[1]))
    record = decode_map(_get(f"{base}/map?run=long&tag=sample_0/gpt.h.0.attn&step=10")[1])
    cells = [[0, 1500, 1499], [0, 1500, 1510], [0, 1520, 1470], [0, 1530, 1529]]
    pooled_cells = [[0, 0, 0], [0, 1, 0], [0, 1000, 0], [0, 1000, 996], [0, 2047, 1], [0, 2047, 2047]]
    checks = {"scenario": "large", "hash": "&p.attnviz.run=long", "hang_guard_ms": 60_000,
              "drag": [[1460, 1460], [1540, 1540]], "probe_zoomed": cells, "probe_pooled": pooled_cells,
              "hover_pooled": [[1000, 0], [1000, 996]]}  # fmt: skip
    screenshot = tmp_path / "large.png"
    summary = _drive(base, screenshot, checks)
    assert summary["ok"], summary
    # the time to the first picture, reported (pytest --junitxml keeps it): no timing is asserted
    record_property("first_picture_ms", summary["drawn_ms"])
    record_property("paint_ms", summary["paint_ms"])
    assert summary["drawn_ms"] < 60_000 and summary["answer_ms"] < 5_000  # a hang guard, not a benchmark
    # shown pooled by the pictures' rule: token 0 alone, the rest in even contiguous blocks, the same
    # blocks plan_axis gives, said as the pictures say it
    assert summary["pooled"] and summary["zoom_info"].startswith("all 2048 × 2048 cells"), summary
    q_group = np.array([int(g) for g in summary["q_group"].split(",")])
    plan = plan_axis(n, int(q_group.max()) + 1, keep=1)
    assert plan.pooled and np.array_equal(q_group, plan.group) and plan.sizes[0] == 1
    assert summary["k_group"] == summary["q_group"]
    assert f"downsampled {plan.describe()} per side" in summary["zoom_info"], summary["zoom_info"]
    pooled = pool(torch.from_numpy(_mean(record)[0]), plan, plan).numpy()
    shown = pool(torch.from_numpy(record.visible.any(axis=0)), plan, plan).numpy()
    pooled_colours = colorize(pooled, shown, plan.sizes)  # pooled keys per token, as the pictures
    for key, rgb in summary["cells_pooled"].items():
        _, r, c = map(int, key.split(","))
        want = pooled_colours[plan.group[r], plan.group[c]]
        assert rgb == GRAY if not shown[plan.group[r], plan.group[c]] else _close(rgb, want), (key, rgb, want)
    hover = summary["hover_pooled"]
    # hovering names a block's tokens as the pictures label them, and the first token by its own
    first, last = (int(i) for i in np.flatnonzero(plan.group == plan.group[1000])[[0, -1]])
    assert hover["1000,0"].startswith(f"queries \u2068{first}–{last}\u2069 → key 0 \u2068t0\u2069: "), hover
    near = [plan.labels()[b] for b in range(plan.group[996] - 1, plan.group[996] + 2)]  # cells ~1.6 px wide
    said = [f"queries \u2068{first}–{last}\u2069 → keys \u2068{keys}\u2069: " for keys in near]
    assert any(hover["1000,996"].startswith(s) for s in said), hover
    assert hover["1000,996"].endswith("(block: rows averaged, keys summed)"), hover
    zoomed = summary["zoomed"]
    assert int(zoomed["q0"]) <= 1460 and int(zoomed["k0"]) <= 1460
    assert "p.attnviz.zoom=" in summary["url_zoomed"]
    assert (
        summary["zoom_info_zoomed"].startswith("queries 14")
        and "downsampled" not in summary["zoom_info_zoomed"]
    )
    colours = colorize(*_mean(record))  # full resolution: each cell its own colour, as the pictures'
    for key, rgb in summary["cells_zoomed"].items():
        _, r, c = map(int, key.split(","))
        assert rgb == GRAY if c > r else _close(rgb, colours[r, c]), (key, rgb, colours[r, c])
    assert summary["pooled_after_reset"]
    _keep(screenshot, "attention_tab_large_pooled.png")
    _keep(tmp_path / "large-zoomed.png", "attention_tab_large.png")


def test_an_image_map_larger_than_its_panel_keeps_cls_alone_and_pools_patches_in_squares(tmp_path):
    """A ViT at 384 px (CLS + 24 × 24 patches) kept whole in the tab (dashboard_tokens ≥ 577): its
    panel is 320 px high, so the tab pools it on screen, by the pictures' rule: CLS alone, patches in
    2 × 2 squares, not uniform blocks that merge CLS with patches."""
    _browser_or_skip()
    grid = PatchGrid((24, 24), 1, 16)
    n, rng = grid.length, np.random.default_rng(1)
    weights = rng.random((2, n, n), dtype=np.float32) ** 6
    weights[:, :, 0] += 0.5  # every query attends to CLS: merged with a patch it would read differently
    weights /= weights.sum(-1, keepdims=True)
    labels = grid.labels()
    view = AttentionView("vit.blocks.0.attn", 0, weights, None, labels, labels)
    blob = encode_map(layer=view.layer, sample=0, step=4, epoch=0, weights=weights, visible=None,
                      q_labels=labels, k_labels=labels, image=rng.random((96, 96, 3)), grid=grid.grid,
                      prefix_tokens=1, blocks=screen_blocks(view, grid, 1))  # fmt: skip
    writer = EventFileWriter(str(tmp_path / "vit"))
    value = tab_value(f"sample_0/{view.layer}", blob)
    writer.add_event(Event(step=4, wall_time=time.time(), summary=Summary(value=[value])))
    writer.close()
    base = _tensorboard(tmp_path)
    _wait_for(lambda: json.loads(_get(f"{base}/runs")[1]))
    record = _record(base, "vit", f"sample_0/{view.layer}", 4)
    cells = [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 2], [0, 30, 0], [0, 100, 400], [0, 576, 576]]
    checks = {"scenario": "large", "hash": "&p.attnviz.run=vit", "hang_guard_ms": 60_000,
              "drag": [[200, 200], [260, 260]], "probe_zoomed": [[0, 230, 231]], "probe_pooled": cells,
              "hover_pooled": [[300, 0], [300, 301]]}  # fmt: skip
    summary = _drive(base, tmp_path / "vit.png", checks)
    assert summary["ok"] and summary["pooled"], summary
    q_group = np.array([int(g) for g in summary["q_group"].split(",")])
    plan = plan_axis(n, int(q_group.max()) + 1, grid, keep=1)
    assert np.array_equal(q_group, plan.group) and plan.sizes[0] == 1 and plan.factor >= 2
    assert summary["k_group"] == summary["q_group"]
    assert f"downsampled {plan.describe()} per side" in summary["zoom_info"], summary["zoom_info"]
    assert "CLS kept alone, patches in" in summary["zoom_info"]
    pooled = pool(torch.from_numpy(_mean(record)[0]), plan, plan).numpy()
    colours = colorize(pooled, None, plan.sizes)
    for key, rgb in summary["cells_pooled"].items():
        _, r, c = map(int, key.split(","))
        assert _close(rgb, colours[plan.group[r], plan.group[c]]), (key, rgb)
    labels_of = plan.labels(labels)
    square = labels_of[plan.group[300]]
    assert square.startswith("r") and ",c" in square
    said = f"queries \u2068{square}\u2069 → key 0 \u2068CLS\u2069: "
    assert summary["hover_pooled"]["300,0"].startswith(said), summary["hover_pooled"]
    assert summary["zoomed"]["pooled"] == "0", summary["zoomed"]  # a dragged region opens cell for cell
    assert summary["pooled_after_reset"]


def test_an_empty_logdir_says_no_data_yet(tmp_path):
    _browser_or_skip()
    summary = _drive(_tensorboard(tmp_path), tmp_path / "empty.png", "--empty")
    assert "No attention data yet" in summary["message"]
