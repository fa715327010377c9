"""The Attention tab's routes, served by an in-process TensorBoard on event files a real fit wrote."""

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from lightning_models import VOCAB, LitGPT, make_trainer, token_loader
from tensorboard import default, program

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.tb_plugin import AttentionPlugin


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def _tensorboard(logdir, load_fast: str = "false") -> str:
    """An in-process TensorBoard with the plugins `pip install` registers (entry points included)."""
    assert AttentionPlugin in default.get_dynamic_plugins()  # registered through the entry point
    board = program.TensorBoard(plugins=default.get_plugins())  # static and entry-point plugins
    board.configure(
        argv=[
            None,
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(_free_port()),
            "--load_fast",
            load_fast,
            "--reload_interval",
            "1",
        ]
    )
    return board.launch().rstrip("/") + "/data/plugin/attnviz"


def _wait_for(fn, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


def decode_map(blob: bytes) -> tuple[dict, np.ndarray]:
    n = int.from_bytes(blob[:4], "little")
    header = json.loads(blob[4 : 4 + n])
    data = np.frombuffer(blob[4 + n :], dtype=np.uint8)[: header["heads"] * header["q"] * header["k"]]
    maps = (
        data.reshape(header["heads"], header["q"], header["k"])
        / 255
        * np.array(header["scale"])[:, None, None]
    )
    return header, maps


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    trainer = make_trainer(tmp, [AttentionMonitor(tokens=VOCAB, plots=["heatmap"])], max_epochs=2)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    return tmp


def test_listing_steps_one_step_and_404s(fitted):
    base = _tensorboard(fitted)
    _wait_for(lambda: json.loads(_get(f"{base}/runs")[1]))  # the first load runs in the background
    status, body, _ = _get(f"{base}/runs")
    assert status == 200
    runs = json.loads(body)
    tags = [f"sample_{s}/model.h.{i}.attn" for s in range(2) for i in range(2)]
    assert runs == {"tb/version_0": tags}

    query = urllib.parse.urlencode({"run": "tb/version_0", "tag": "sample_1/model.h.1.attn"})
    status, body, _ = _get(f"{base}/steps?{query}")
    assert (status, json.loads(body)) == (200, [3, 6])

    status, blob, content_type = _get(f"{base}/map?{query}&step=6")
    assert status == 200 and content_type == "application/octet-stream"
    header, maps = decode_map(blob)
    assert header["format"] == "attnviz/1" and header["step"] == 6 and header["sample"] == 1
    assert (header["heads"], header["q"], header["k"]) == (4, 10, 10)
    assert header["q_labels"] == header["k_labels"] and all(
        label.startswith("w") for label in header["q_labels"]
    )
    rows = maps.sum(-1)
    assert np.allclose(rows, 1, atol=0.05)  # uint8 quantisation of rows that sum to 1
    assert np.all(np.triu(maps[0], 1) == 0)  # causal: nothing above the diagonal
    assert len(blob) < 2000

    for url in (
        f"{base}/map?{query}&step=4",
        f"{base}/map?{query}&step=x",
        f"{base}/map?run=nope&tag=sample_0/model.h.0.attn&step=3",
        f"{base}/steps?run=tb/version_0&tag=nope",
        f"{base}/steps",
    ):
        status, body, _ = _get(url)
        assert status == 404, url
        assert "error" in json.loads(body)


def test_the_fast_data_server_serves_the_same(fitted):
    """TensorBoard's default (Rust) data server, where the legacy multiplexer does not exist."""
    base = _tensorboard(fitted, load_fast="auto")
    runs = _wait_for(lambda: json.loads(_get(f"{base}/runs")[1]))
    assert "tb/version_0" in runs
    query = urllib.parse.urlencode({"run": "tb/version_0", "tag": "sample_0/model.h.0.attn"})
    status, blob, _ = _get(f"{base}/map?{query}&step=3")
    assert status == 200 and decode_map(blob)[0]["layer"] == "model.h.0.attn"


def test_empty_logdir_then_a_run_being_written(tmp_path):
    base = _tensorboard(tmp_path)
    assert json.loads(_get(f"{base}/runs")[1]) == {}
    status, body, content_type = _get(f"{base}/index.js")
    assert status == 200 and "javascript" in content_type and b"export async function render" in body

    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"])], max_epochs=1)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    runs = _wait_for(lambda: json.loads(_get(f"{base}/runs")[1]))  # picked up on reload
    assert runs["tb/version_0"][0] == "sample_0/model.h.0.attn"
