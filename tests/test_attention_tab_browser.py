"""The Attention tab in a real browser: Debian's Chromium driven by playwright-core (tests/e2e)."""

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from lightning_models import VOCAB, LitGPT, make_trainer, token_loader
from test_tb_plugin import _get, _tensorboard, _wait_for, decode_map

from lightning_attnviz import AttentionMonitor

E2E = Path(__file__).parent / "e2e"
CHROMIUM = Path("/usr/bin/chromium")


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


def _drive(plugin_base: str, screenshot: Path, expected: str) -> dict:
    """Run tests/e2e/attention_tab.mjs against the TensorBoard serving ``plugin_base``; its JSON summary."""
    root = plugin_base.rsplit("/data/plugin/", 1)[0]
    result = subprocess.run(
        ["node", str(E2E / "attention_tab.mjs"), root, str(screenshot), expected],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=E2E,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout[result.stdout.index("{") :])


def test_hover_a_token_and_slide_through_training(tmp_path):
    _browser_or_skip()
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=VOCAB, plots=["heatmap"])], max_epochs=3)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    base = _tensorboard(tmp_path)
    _wait_for(lambda: json.loads(_get(f"{base}/runs")[1]))  # the first load runs in the background

    # what the tab must show when query token 1 is hovered: the default view (first run and tag,
    # latest step, mean over heads), computed here from the served record
    tag = "sample_0/model.h.0.attn"
    query = urllib.parse.urlencode({"run": "tb/version_0", "tag": tag})
    steps = json.loads(_get(f"{base}/steps?{query}")[1])
    header, maps = decode_map(_get(f"{base}/map?{query}&step={steps[-1]}")[1])
    row = maps.mean(axis=0)[1]
    top = int(np.argmax(row))
    expected = f"{header['k_labels'][top]}  {row[top]:.3f}"

    screenshot = tmp_path / "attention_tab.png"
    summary = _drive(base, screenshot, expected)
    assert summary["ok"] and summary["canvas_changed"], summary
    assert expected in summary["topkeys"]
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("ATTNVIZ_SCREENSHOT"):  # refresh the README's picture: ATTNVIZ_SCREENSHOT=docs/...
        shutil.copy(screenshot, os.environ["ATTNVIZ_SCREENSHOT"])


def test_an_empty_logdir_says_no_data_yet(tmp_path):
    _browser_or_skip()
    summary = _drive(_tensorboard(tmp_path), tmp_path / "empty.png", "--empty")
    assert "No attention data yet" in summary["topkeys"]
