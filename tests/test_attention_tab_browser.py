"""The Attention tab in a real browser: Debian's Chromium driven by playwright-core (tests/e2e).

The logs are written here with the record encoder (test_tb_plugin.write_demo_logs), not by a training
run, so the tab is tested on exactly the cases it must draw: causal and padded maps, repeated tokens,
a bidi control in a label, layer names out of lexicographic order and too long for the menu, an image.
"""

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from test_tb_plugin import LAYERS, _get, _tensorboard, _wait_for, write_demo_logs

from lightning_attnviz.tab.record import decode_map

E2E = Path(__file__).parent / "e2e"
CHROMIUM = Path("/usr/bin/chromium")
DOCS_PICTURE = Path(__file__).parent.parent / "docs" / "attention_tab.png"
GRAY = [215, 215, 215]  # masked cells (render.py's MASKED_RGB)


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
        timeout=120,
        cwd=E2E,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_the_tab_draws_masks_positions_layers_bidi_and_images(tmp_path):
    _browser_or_skip()
    write_demo_logs(tmp_path)
    base = _tensorboard(tmp_path)
    _wait_for(lambda: len(json.loads(_get(f"{base}/runs")[1])) == 2)  # the first load runs in the background

    # the default view: first run and sample, the LAST layer (blocks.10 after blocks.2), latest step,
    # mean over heads; query 5 attends to key 3, an "i" like keys 1 and 6
    tag = "sample_0/blocks.10.attn"
    query = urllib.parse.urlencode({"run": "text", "tag": tag})
    steps = json.loads(_get(f"{base}/steps?{query}")[1])
    record = decode_map(_get(f"{base}/map?{query}&step={steps[-1]}")[1])
    row = record.weights.mean(axis=0)[5]
    expected = f"\u2068i\u2069@3  {row[3]:.3f}"
    checks = {
        "expected_topkey": expected,
        "hover_index": 5,
        "probe_cells": [[0, 5], [7, 8], [5, 3]],  # causal future, padding, visible
        "bidi_index": 5,
        "vision_run": "vit",
    }
    screenshot = tmp_path / "attention_tab.png"
    summary = _drive(base, screenshot, checks)
    assert summary["ok"] and summary["canvas_changed"], summary

    assert summary["layer"] == "blocks.10.attn"  # opens on the last layer
    long_name = LAYERS[3]
    (option,) = [o for o in summary["layer_options"] if o["value"] == long_name]
    assert option["title"] == long_name and "…" in option["text"] and len(option["text"]) < len(long_name)
    assert option["text"].startswith("blocks.1.") and option["text"].endswith("attn")  # cut in the middle

    assert summary["cells"]["0,5"] == GRAY and summary["cells"]["7,8"] == GRAY  # masked cells are gray
    assert summary["cells"]["5,3"] != GRAY

    lines = summary["topkeys"].split("\n")
    assert expected in lines  # positions tell the repeated "i" apart
    assert any(line.startswith("\u2068i\u2069@1  ") for line in lines)

    assert summary["token_text"] == "\u2068\u202etxt.exe\u2069"  # isolated: cannot reorder its neighbours
    assert summary["token_unicode_bidi"] == "isolate"

    vision = summary["vision"]
    assert vision["in_plot"] and vision["leads"], vision  # the picture leads, the heatmap follows
    assert vision["caption"].startswith("query 0 · \u2068CLS\u2069 → patches · hover a patch")
    assert vision["caption"].count("CLS") == 1

    assert screenshot.stat().st_size > 10_000
    if os.environ.get("ATTNVIZ_SCREENSHOT"):  # refresh the README's picture: ATTNVIZ_SCREENSHOT=1
        shutil.copy(screenshot, DOCS_PICTURE)


def test_an_empty_logdir_says_no_data_yet(tmp_path):
    _browser_or_skip()
    summary = _drive(_tensorboard(tmp_path), tmp_path / "empty.png", "--empty")
    assert "No attention data yet" in summary["topkeys"]
