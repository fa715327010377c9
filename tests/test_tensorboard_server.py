"""END-TO-END: a real tiny Lightning fit with AttentionMonitor, served by the real `tensorboard` command.

The one test here that depends on the callback: the rest of the tab's tests (test_tb_plugin.py,
test_attention_tab_browser.py) write their event files with the record encoder directly. This one
checks that what the callback writes is what users browse: the pictures in the images plugin and the
Attention tab's routes, under TensorBoard's default (Rust) data server.
"""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from lightning_models import VOCAB, LitGPT, make_trainer, read_events, token_loader
from matplotlib.image import imread

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.tab.record import decode_map


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture
def logdir(tmp_path):
    trainer = make_trainer(
        tmp_path, [AttentionMonitor(tokens=VOCAB, plots=["heatmap", "heads"])], max_epochs=2
    )
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    return tmp_path


def test_end_to_end_real_fit_images_and_attention_tab(logdir, tmp_path):
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--samples_per_plugin",
        "images=1000",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/data/plugin/images"
    try:
        tags, deadline = {}, time.monotonic() + 60
        while time.monotonic() < deadline:  # the server loads event files in the background
            try:
                tags = json.loads(_get(f"{base}/tags"))
                if tags.get("tb/version_0"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        run_tags = tags["tb/version_0"]
        tag = "attention/sample_0/model.h.1.attn/heatmap"
        assert tag in run_tags
        assert "attention/sample_1/model.h.0.attn/heads" in run_tags
        query = urllib.parse.urlencode({"run": "tb/version_0", "tag": tag})
        entries = json.loads(_get(f"{base}/images?{query}"))
        assert [e["step"] for e in entries] == [2, 5]
        png = _get(f"{base}/individualImage?{entries[-1]['query']}")
        (tmp_path / "served.png").write_bytes(png)
        image = imread(tmp_path / "served.png")
        logged = read_events(logdir / "tb" / "version_0").Images(tag)[-1]
        assert image.shape[:2] == (logged.height, logged.width)  # the image the callback wrote
        assert image[..., :3].std() > 0.05

        # the Attention tab's routes on the same server
        tab = f"http://127.0.0.1:{port}/data/plugin/attnviz"
        tab_tags = json.loads(_get(f"{tab}/runs"))["tb/version_0"]
        assert "sample_0/model.h.1.attn" in tab_tags
        query = urllib.parse.urlencode({"run": "tb/version_0", "tag": "sample_0/model.h.1.attn"})
        steps = json.loads(_get(f"{tab}/steps?{query}"))
        assert steps == [2, 5]
        record = decode_map(_get(f"{tab}/map?{query}&step=5"))
        assert (record.step, record.layer, record.q, record.k) == (5, "model.h.1.attn", 10, 10)
        assert record.visible is not None and not record.visible[0, 0, 1]  # causal: the future is masked
        assert abs(float(record.weights.mean(axis=0).sum(-1).mean()) - 1) < 0.05
    finally:
        server.terminate()
        server.wait(timeout=20)
