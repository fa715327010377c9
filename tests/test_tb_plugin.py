"""The Attention tab's record format and routes, on event files written here (no callback involved).

Each route test runs against both of TensorBoard's data providers: the in-process multiplexer
(``--load_fast false``) and the Rust data server (``--load_fast true``).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tensorboard import default, program
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from lightning_attnviz.tab.plugin import AttentionPlugin
from lightning_attnviz.tab.record import FORMAT, decode_map, encode_map, tab_value

# the demo logs: layers out of lexicographic order (the tab opens on blocks.10, the last one)
LAYERS = [
    "blocks.0.attn",
    "blocks.2.attn",
    "blocks.10.attn",
    "blocks.1." + "very_long_module_name_" * 3 + "attn",
]
WORDS = ["<s>", "i", "said", "i", "think", "\u202etxt.exe", "i", "go", "<pad>", "<pad>"]
STEPS = [3, 6, 9]
HEADS = 2


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


def _tensorboard(logdir: Path, load_fast: str = "false") -> str:
    """An in-process TensorBoard with the plugins `pip install` registers; the plugin's base URL."""
    assert AttentionPlugin in default.get_dynamic_plugins()  # registered through the entry point
    board = program.TensorBoard(plugins=default.get_plugins())
    port = str(_free_port())
    argv = [None, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", port, "--load_fast", load_fast]
    board.configure(argv=[*argv, "--reload_interval", "1"])
    return board.launch().rstrip("/") + "/data/plugin/attnviz"


def _wait_for(fn, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


def causal_weights(step: int, layer: int, q: int = 10, pad: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Causal maps over ``q`` tokens whose last ``pad`` keys are padding; query 5 attends to key 3."""
    rng = np.random.default_rng(step * 10 + layer)
    visible = np.tril(np.ones((q, q), bool))[None]
    visible[..., q - pad :] = False
    visible[..., 0] = True
    weights = rng.random((HEADS, q, q)).astype(np.float32) ** 4 * visible
    weights[:, 5] = 0.0005
    weights[:, 5, 3] = 1.0
    weights[:, 5, 5 + 1 :] = 0
    weights /= weights.sum(-1, keepdims=True)
    return weights, visible


def write_demo_logs(logdir: Path, vision: bool = True) -> None:
    """Runs ``text`` (causal, padded, repeated and bidi tokens, long layer names) and ``vit`` (an image)."""
    writer = EventFileWriter(str(logdir / "text"))
    for step in STEPS:
        values = []
        for sample in range(2):
            for n, layer in enumerate(LAYERS):
                weights, visible = causal_weights(step + sample, n)
                blob = encode_map(
                    layer=layer,
                    sample=sample,
                    step=step,
                    weights=weights,
                    visible=visible,
                    q_labels=WORDS,
                    k_labels=WORDS,
                    note="",
                )
                values.append(tab_value(f"sample_{sample}/{layer}", blob))
        writer.add_event(Event(step=step, wall_time=time.time(), summary=Summary(value=values)))
    writer.close()
    if not vision:
        return
    writer = EventFileWriter(str(logdir / "vit"))
    rng = np.random.default_rng(0)
    tokens = 1 + 16  # CLS and a 4×4 patch grid
    yy, xx = np.mgrid[0:64, 0:64] / 63
    image = np.stack([xx, yy, 0.5 + 0 * xx], axis=-1)
    for step in STEPS[:2]:
        weights = rng.random((3, tokens, tokens)).astype(np.float32)
        weights[:, 0, 1 + 5] = 8  # CLS looks at patch (1, 1)
        weights /= weights.sum(-1, keepdims=True)
        labels = ["CLS"] + [f"p{i}" for i in range(16)]
        blob = encode_map(
            layer="blocks.0.attn",
            sample=0,
            step=step,
            weights=weights,
            visible=None,
            q_labels=labels,
            k_labels=labels,
            note="",
            image=image,
            grid=(4, 4),
            prefix_tokens=1,
        )
        value = tab_value("sample_0/blocks.0.attn", blob)
        writer.add_event(Event(step=step, wall_time=time.time(), summary=Summary(value=[value])))
    writer.close()


# -- the record --------------------------------------------------------------------------------------


def test_record_round_trip_weights_mask_image():
    weights, visible = causal_weights(3, 0)
    weights[1, 4, 2] = np.nan
    image = np.random.default_rng(1).random((6, 8, 3))
    blob = encode_map(
        layer="a.b",
        sample=2,
        step=7,
        weights=weights,
        visible=visible,
        q_labels=WORDS,
        k_labels=WORDS,
        note="pooled queries 20→10 (mean of 2)",
        image=image,
        grid=(2, 2),
        prefix_tokens=1,
    )
    record = decode_map(blob)
    assert (record.format, record.step, record.layer, record.sample) == (FORMAT, 7, "a.b", 2)
    assert (record.heads, record.q, record.k) == (HEADS, 10, 10)
    assert record.q_labels == tuple(WORDS) and record.note.startswith("pooled queries 20→10")
    assert np.array_equal(record.visible, visible)  # the mask is exact
    assert np.isnan(record.weights[1, 4, 2]) and np.isnan(record.weights).sum() == 1
    expected = np.where(visible, weights, 0)
    scale = np.array(record.scales)[:, None, None]
    error = np.abs(np.nan_to_num(record.weights) - np.nan_to_num(expected))
    assert np.all(error <= scale / 254 / 2 + 1e-6)  # half a quantisation level per head
    assert np.array_equal(record.image, (image * 255).round().astype(np.uint8))  # the image is exact
    assert (record.grid, record.prefix_tokens) == ((2, 2), 1)


def test_record_without_mask_or_image_and_per_head_masks():
    weights = np.full((3, 2, 4), 0.25, np.float32)

    def encode(visible):
        return encode_map(
            layer="l",
            sample=0,
            step=1,
            weights=weights,
            visible=visible,
            q_labels=["a", "b"],
            k_labels=list("wxyz"),
        )

    record = decode_map(encode(None))
    assert record.visible is None and record.image is None and record.grid is None
    assert np.allclose(record.weights, 0.25)
    assert decode_map(encode(np.ones((1, 2, 4), bool))).visible is None  # nothing masked: stored as no mask
    per_head = np.random.default_rng(0).random((3, 2, 4)) > 0.3
    record = decode_map(encode(per_head))
    assert np.array_equal(record.visible, per_head)
    assert np.all(record.weights[~per_head] == 0)


def test_record_errors_name_the_argument():
    weights = np.ones((1, 2, 2), np.float32) / 2
    with pytest.raises(ValueError, match="k_labels"):
        encode_map(
            layer="l", sample=0, step=0, weights=weights, visible=None, q_labels=["a", "b"], k_labels=["a"]
        )
    with pytest.raises(ValueError, match="visible"):
        encode_map(
            layer="l",
            sample=0,
            step=0,
            weights=weights,
            visible=np.ones((3, 3), bool),
            q_labels=["a", "b"],
            k_labels=["a", "b"],
        )
    with pytest.raises(ValueError, match="grid"):
        encode_map(
            layer="l",
            sample=0,
            step=0,
            weights=weights,
            visible=None,
            q_labels=["a", "b"],
            k_labels=["a", "b"],
            image=np.zeros((2, 2, 3)),
        )
    blob = encode_map(
        layer="l", sample=0, step=0, weights=weights, visible=None, q_labels=["a", "b"], k_labels=["a", "b"]
    )
    with pytest.raises(ValueError, match="bytes"):
        decode_map(blob[:-1])
    with pytest.raises(ValueError, match="format"):
        decode_map(blob.replace(b"attnviz/2", b"attnviz/1"))


# -- the routes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_logs(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("logs")
    write_demo_logs(logdir)
    return logdir


@pytest.fixture(scope="module", params=["false", "true"], ids=["multiplexer", "rust-data-server"])
def base(request, demo_logs) -> str:
    url = _tensorboard(demo_logs, load_fast=request.param)
    _wait_for(lambda: len(json.loads(_get(f"{url}/runs")[1])) == 2)  # the first load runs in the background
    return url


def test_runs_steps_and_one_map(base):
    status, body, _ = _get(f"{base}/runs")
    assert status == 200
    runs = json.loads(body)
    assert runs["text"] == sorted(f"sample_{s}/{layer}" for s in range(2) for layer in LAYERS)
    assert runs["vit"] == ["sample_0/blocks.0.attn"]

    query = urllib.parse.urlencode({"run": "text", "tag": "sample_1/blocks.10.attn"})
    status, body, _ = _get(f"{base}/steps?{query}")
    assert (status, json.loads(body)) == (200, STEPS)

    status, blob, content_type = _get(f"{base}/map?{query}&step=6")
    assert status == 200 and content_type == "application/octet-stream"
    record = decode_map(blob)
    assert (record.step, record.sample, record.layer) == (6, 1, "blocks.10.attn")
    weights, visible = causal_weights(6 + 1, 2)
    assert np.array_equal(record.visible, visible)
    assert np.allclose(record.weights, weights, atol=1 / 254)

    vit = decode_map(_get(f"{base}/map?run=vit&tag=sample_0/blocks.0.attn&step=3")[1])
    assert vit.image.shape == (64, 64, 3) and vit.grid == (4, 4) and vit.prefix_tokens == 1


@pytest.mark.parametrize(
    ("route", "code"),
    [
        ("map?run=text&tag=sample_0/blocks.0.attn&step=4", 404),  # no such step
        ("map?run=nope&tag=sample_0/blocks.0.attn&step=3", 404),
        ("steps?run=text&tag=nope", 404),
        ("map?run=text&tag=sample_0/blocks.0.attn&step=x", 400),
        ("map?run=text&tag=sample_0/blocks.0.attn", 400),
        ("steps?tag=sample_0/blocks.0.attn", 400),
        ("steps", 400),
        ("static/nope.js", 404),
    ],
)
def test_bad_requests_answer_404_or_400_with_a_message(base, route, code):
    status, body, _ = _get(f"{base}/{route}")
    assert status == code, route
    assert body.strip(), "the answer says why"


def test_static_files_and_no_path_traversal(base):
    status, body, content_type = _get(f"{base}/static/index.js")
    assert status == 200 and "javascript" in content_type and b"export async function render" in body
    status, body, content_type = _get(f"{base}/static/style.css")
    assert status == 200 and content_type.startswith("text/css")
    host = urllib.parse.urlsplit(base)
    for path in (
        "static/../tb_plugin.py",
        "static/%2e%2e/tb_plugin.py",
        "static/..%2ftb_plugin.py",
        "static/%2e%2e%2f%2e%2e%2flightning_attnviz/record.py",
        "static//etc/passwd",
        "static/%2fetc%2fpasswd",
        "static/..\\tb_plugin.py",
        "static/",
    ):
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        connection.request("GET", f"{host.path}/{path}")  # sent as is: urllib would not normalise either
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status in (400, 404), path
        assert b"import" not in body and b"root:" not in body, path


def test_frontend_metadata_points_at_the_entry_module(base):
    root = base.rsplit("/data/plugin/", 1)[0]
    listing = json.loads(_get(f"{root}/data/plugins_listing")[1])
    entry = listing["attnviz"]
    assert entry["tab_name"] == "Attention"
    assert entry["enabled"] is True
    assert entry["loading_mechanism"] == {
        "type": "IFRAME",
        "module_path": "/data/plugin/attnviz/static/index.js",
    }


def test_empty_logdir_then_a_run_being_written(tmp_path):
    url = _tensorboard(tmp_path)
    assert json.loads(_get(f"{url}/runs")[1]) == {}
    write_demo_logs(tmp_path, vision=False)
    runs = _wait_for(lambda: json.loads(_get(f"{url}/runs")[1]))  # picked up on reload
    assert runs["text"][0] == "sample_0/blocks.0.attn"
