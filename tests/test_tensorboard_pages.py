"""The monitor's pictures on TensorBoard's own pages, in a real browser: a real fit, the real
`tensorboard` server, Debian's Chromium (tests/e2e/tensorboard_pages.mjs).

TensorBoard shows a picture at its card's size, not at its own: the Images dashboard 350 px wide, Time
Series within about 388 × 215 px. The pictures are laid out for that, so their text reads there
without "Show actual image size".
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lightning_models import VOCAB, LitGPT, make_trainer, token_loader
from test_attention_tab_browser import E2E, _browser_or_skip
from test_tensorboard_server import _free_port

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.render.layout import LABEL

DOCS = Path(__file__).parent.parent / "docs"


@pytest.fixture
def served(tmp_path):
    _browser_or_skip()
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=VOCAB)], max_epochs=2)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    port = _free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host", "127.0.0.1",
           "--port", str(port), "--samples_per_plugin", "images=100"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the server loads event files in the background
        try:
            with urllib.request.urlopen(f"{url}/data/plugin/images/tags", timeout=5) as response:
                if json.loads(response.read()).get("tb/version_0"):
                    break
        except OSError:
            pass
        time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=20)


def test_pictures_are_legible_on_the_images_and_time_series_cards(served, tmp_path):
    prefix = tmp_path / "tb"
    checks = {"pages": ["images", "timeseries", "custom_scalars"], "filter": "attention/", "min_pictures": 6}
    result = subprocess.run(
        ["node", str(E2E / "tensorboard_pages.mjs"), served, str(prefix), json.dumps(checks)],
        capture_output=True, text=True, timeout=240, cwd=E2E,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    for page in ("images", "timeseries"):
        pictures = summary["pages"][page]
        assert len(pictures) >= 6, (page, pictures)
        for picture in pictures:
            scale = picture["shown"][0] / picture["natural"][0]
            # a label's pixels as shown: 8 px or more (the pictures drawn before showed them at 3–5 px)
            assert LABEL * scale >= 8, (page, picture)
    if os.environ.get("ATTNVIZ_SCREENSHOT"):  # refresh docs/: ATTNVIZ_SCREENSHOT=1
        for page in ("images", "timeseries", "custom_scalars"):
            shutil.copy(f"{prefix}-{page}.png", DOCS / f"tensorboard_{page}.png")
