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

from lightning_attnviz.tab.overview import MatrixMetric, decode_overview, encode_overview
from lightning_attnviz.tab.plugin import AttentionPlugin
from lightning_attnviz.tab.record import (
    FORMAT,
    LEVELS,
    Marker,
    decode_map,
    decode_markers,
    encode_map,
    encode_markers,
    tab_value,
)

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


def entropy_norm(weights: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Per head, each row's entropy over log(visible keys), averaged over rows with two or more keys."""
    w = np.where(visible, weights, 0.0).astype(np.float64)
    n = np.broadcast_to(visible, w.shape).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(w > 0, w * np.log(w), 0.0)).sum(-1) / np.log(n)
    return np.where(n > 1, h, np.nan)[:, n[0] > 1].mean(-1)


def write_text_run(logdir: Path, run: str, seed: int, markers: dict[int, list[str]]) -> None:
    """One text run: maps of every sample and layer, an overview and ``markers`` per step."""
    writer = EventFileWriter(str(logdir / run))
    for step in STEPS:
        values, entropy = [], []
        for sample in range(2):
            for n, layer in enumerate(LAYERS):
                weights, visible = causal_weights(step + sample + seed, n)
                blob = encode_map(
                    layer=layer,
                    sample=sample,
                    step=step,
                    epoch=step // 4,
                    weights=weights,
                    visible=visible,
                    q_labels=WORDS,
                    k_labels=WORDS,
                    note="",
                )
                values.append(tab_value(f"sample_{sample}/{layer}", blob))
                if sample == 0:
                    entropy.append(entropy_norm(weights, visible))
        metric = MatrixMetric("entropy_norm", "normalised attention entropy", "0 = one key, 1 = uniform",
                              np.array(entropy), 0.0, 1.0, ("one key", "uniform"), 2)  # fmt: skip
        sink = MatrixMetric("sink", "attention-sink share", "weight on the first key", np.array(entropy) / 3,
                            0.0, 1.0, ("none", "all on sink"), 2)  # fmt: skip
        overview = encode_overview(step, step // 4, LAYERS, [metric, sink])
        values.append(tab_value("overview", overview, "overview"))
        if step in markers:
            blob = encode_markers([Marker(step, text) for text in markers[step]])
            values.append(tab_value("markers", blob, "markers"))
        writer.add_event(Event(step=step, wall_time=time.time(), summary=Summary(value=values)))
    writer.close()


def write_demo_logs(logdir: Path, vision: bool = True, second_text: bool = False) -> None:
    """Runs ``text`` (causal, padded, repeated and bidi tokens, long layer names, an overview and a
    marker), ``vit`` (an image) and, with ``second_text``, ``text_b``: the text run's layers, other
    weights."""
    write_text_run(logdir, "text", 0, {6: ["phase change: blocks.10.attn head 1"]})
    if second_text:
        write_text_run(logdir, "text_b", 100, {})
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
    assert record.epoch is None  # not given
    assert (record.heads, record.q, record.k) == (HEADS, 10, 10)
    assert record.q_labels == tuple(WORDS) and record.note.startswith("pooled queries 20→10")
    assert np.array_equal(record.visible, visible)  # the mask is exact
    assert np.isnan(record.weights[1, 4, 2]) and np.isnan(record.weights).sum() == 1
    expected = np.nan_to_num(np.where(visible, weights, 0))
    got = np.nan_to_num(record.weights)
    # log-spaced bytes from max / (2·k²) to max: within half a step, relatively, above the floor
    scale = np.array(record.scales)[:, None, None]
    half_step = np.log(2 * 10**2) / (LEVELS - 1) / 2
    above = expected >= scale / (2 * 10**2)
    assert np.all(np.abs(np.log(got[above] / expected[above])) <= half_step + 1e-5)
    assert np.all(got[~above] <= scale.repeat(10, 1).repeat(10, 2)[~above] / (2 * 10**2))
    assert np.array_equal(got[expected == 0], expected[expected == 0])  # zeros (and masked) stay 0
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
        decode_map(blob.replace(b"attnviz/3", b"attnviz/1"))


def test_small_weights_keep_their_colour_where_linear_bytes_lost_them():
    """A uniform row of a 256-token causal map, whose first row is one-hot: attnviz/2's linear bytes
    stored 1/256 as 1 level (0.0039 ± 50 %) and 1/1000 as 0; the log bytes keep both within 3 %."""
    k = 256
    weights = np.zeros((1, 3, k), np.float32)
    weights[0, 0, 0] = 1.0
    weights[0, 1] = 1 / k
    weights[0, 2] = 0.2 / k
    weights[0, 2, 0] = 1 - 0.2 * (k - 1) / k
    labels = [str(i) for i in range(k)]
    record = decode_map(encode_map(layer="l", sample=0, step=0, weights=weights, visible=None,
                                   q_labels=labels[:3], k_labels=labels))  # fmt: skip
    assert np.allclose(record.weights[0, 1], 1 / k, rtol=0.03)
    assert np.allclose(record.weights[0, 2, 1:], 0.2 / k, rtol=0.03)


def test_attnviz_2_records_are_still_read():
    """A record in the previous format (linear bytes, no epoch), written by hand as version 2 wrote it."""
    header = {"format": "attnviz/2", "step": 5, "layer": "l", "sample": 1, "heads": 2, "q": 1, "k": 2,
              "scales": [0.5, 1.0], "q_labels": ["a"], "k_labels": ["a", "b"], "note": "", "mask": None,
              "image": None}  # fmt: skip
    encoded = json.dumps(header).encode()
    blob = len(encoded).to_bytes(4, "little") + encoded + bytes([254, 127, 255, 254])
    record = decode_map(blob)
    assert (record.format, record.step, record.epoch, record.sample) == ("attnviz/2", 5, None, 1)
    assert np.allclose(record.weights[0, 0], [0.5, 0.25]) and np.isnan(record.weights[1, 0, 0])
    assert record.weights[1, 0, 1] == 1.0


def test_overview_and_markers_round_trip_and_refuse_what_they_cannot_hold():
    values = np.array([[0.5, np.nan], [0.25, 1.0]])
    blob = encode_overview(12, 3, ["a", "b"], [MatrixMetric("m", "title", "meaning", values, 0.0, None)])
    overview = decode_overview(blob)
    assert (overview.step, overview.epoch, overview.layers) == (12, 3, ("a", "b"))
    (metric,) = overview.metrics
    assert metric.name == "m" and metric.low == 0.0 and metric.high is None
    assert np.array_equal(metric.values, values, equal_nan=True)
    assert json.loads(blob)["metrics"][0]["values"][0] == [0.5, None]  # JSON without NaN
    with pytest.raises(ValueError, match="layers=3"):
        encode_overview(1, 0, ["a", "b", "c"], [MatrixMetric("m", "t", "", values)])
    markers = decode_markers(encode_markers([Marker(4, "phase change"), Marker(4, "lr drop")]))
    assert markers == [Marker(4, "phase change"), Marker(4, "lr drop")]
    with pytest.raises(ValueError, match="one step"):
        encode_markers([Marker(4, "a"), Marker(5, "b")])
    with pytest.raises(ValueError, match="empty"):
        encode_markers([Marker(4, " ")])
    with pytest.raises(ValueError, match="attnviz-markers/1"):
        decode_markers(blob)
    with pytest.raises(ValueError, match="kind"):
        tab_value("x", blob, "pictures")


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
    floor = 1 / (2 * 10**2)  # the smallest byte above 0: below the colour scale's 1/n² = 0.01
    assert np.allclose(record.weights, np.where(visible, weights, 0), rtol=0.03, atol=floor)
    assert record.epoch == 6 // 4

    vit = decode_map(_get(f"{base}/map?run=vit&tag=sample_0/blocks.0.attn&step=3")[1])
    assert vit.image.shape == (64, 64, 3) and vit.grid == (4, 4) and vit.prefix_tokens == 1


def test_overview_and_markers_are_listed_apart_from_the_maps_and_read_in_step_order(base):
    extras = json.loads(_get(f"{base}/extras")[1])
    assert extras == {"text": {"overview": ["overview"], "markers": ["markers"]}}
    status, body, content_type = _get(f"{base}/records?run=text&tag=overview")
    assert status == 200 and content_type.startswith("application/json")
    overviews = json.loads(body)
    assert [o["step"] for o in overviews] == STEPS
    assert [o["epoch"] for o in overviews] == [s // 4 for s in STEPS]
    assert [m["name"] for m in overviews[0]["metrics"]] == ["entropy_norm", "sink"]
    weights, visible = causal_weights(STEPS[-1], 2)
    expected = entropy_norm(weights, visible)
    assert np.allclose(overviews[-1]["metrics"][0]["values"][2], expected, atol=1e-5)  # blocks.10.attn
    markers = json.loads(_get(f"{base}/records?run=text&tag=markers")[1])
    texts = ["phase change: blocks.10.attn head 1"]
    assert markers == [{"format": "attnviz-markers/1", "step": 6, "texts": texts}]
    assert _get(f"{base}/records?run=text&tag=sample_0/blocks.0.attn")[0] == 400  # maps are binary


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
        ("records?run=text&tag=nope", 404),
        ("records?run=text", 400),
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
