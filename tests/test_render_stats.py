"""The layer × head matrices of the per-head scalars: read back from the pixels and from a real fit."""

import io

import numpy as np
from lightning_models import VOCAB, LitGPT, make_trainer, read_events, token_loader
from matplotlib.image import imread

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.analysis.views import LayerStats
from lightning_attnviz.pipeline.tab_extras import add_markers
from lightning_attnviz.render.stats import STATS_METRICS, draw_stats, metrics, render_stats, stats_matrix
from lightning_attnviz.sinks.base import Outputs
from lightning_attnviz.sinks.tags import Tags
from lightning_attnviz.sinks.tensorboard import TensorBoardSink
from lightning_attnviz.tab.overview import decode_overview
from lightning_attnviz.tab.record import Marker, decode_map, decode_markers

LAYERS = [
    f"model.encoder.layers.{i}.attention.self_attention_with_rotary_embeddings_and_qk_norm" for i in range(3)
]


def _stats(layers: int, heads: int, value: float = 0.5) -> list[LayerStats]:
    return [
        LayerStats(
            layer=f"model.blocks.{i}.attn",
            **{m: np.full(heads, value, dtype=np.float32) for m in (*LayerStats.METRICS, *LayerStats.ROLES)},
        )
        for i in range(layers)
    ]


def _cell(canvas, shape: tuple[int, int], row: int, col: int, box: str = "matrix") -> np.ndarray:
    """The colour at the corner of cell ``(row, col)`` of a ``shape`` matrix (numbers sit in the middle)."""
    b = canvas.boxes[box]
    cell_h, cell_w = b.h // shape[0], b.w // shape[1]
    return canvas.image[b.y + row * cell_h + 1, b.x + col * cell_w + 1].astype(int)


def test_one_row_per_layer_one_column_per_head_planted_value_at_its_cell():
    values = np.full((3, 5), 0.1)
    values[2, 3] = 0.95  # the planted high value: last layer, head 3
    values[0, 4] = np.nan  # no value: gray
    canvas = draw_stats(values, LAYERS, metrics()["entropy_norm"], ("entropy", "step 1"))
    matrix = canvas.boxes["matrix"]
    assert matrix.w % 5 == 0 and matrix.h % 3 == 0  # 5 head columns, 3 layer rows, whole cells
    low, high = _cell(canvas, values.shape, 0, 0), _cell(canvas, values.shape, 2, 3)
    assert np.abs(high - low).sum() > 200, (high, low)  # viridis: dark purple vs yellow
    assert high[0] > 180 and high[1] > 180 and high[2] < 100  # yellow: near the top of the scale
    for row in range(3):
        for col in range(5):
            if (row, col) not in ((2, 3), (0, 4)):
                assert np.array_equal(_cell(canvas, values.shape, row, col), low), (row, col)
    assert tuple(_cell(canvas, values.shape, 0, 4)) == (215, 215, 215)  # gray = no value
    assert "0.95" in {t.text for t in canvas.texts}  # values written in the cells
    # rows named in forward order, without the shared prefix and shortened in the middle
    names = [t for t in canvas.texts if t.box.y + t.box.h <= matrix.y + matrix.h and t.box.x < matrix.x]
    row_names = [t.text for t in names if t.box.y >= matrix.y]
    assert len(row_names) == 3 and all("…" in n for n in row_names), row_names
    assert [n.split(".")[0] for n in row_names] == ["0", "1", "2"]
    for placed in canvas.texts:  # nothing clipped by the picture's edge
        assert placed.box.inside(canvas.box), placed


def test_change_panel_colours_the_difference():
    now = np.full((2, 4), 0.5)
    before = np.concatenate([np.full((2, 4), 0.5), np.full((2, 1), 0.5)], axis=1)
    before[1, 2] = 0.9  # this head's value fell by 0.4
    canvas = draw_stats(now, LAYERS[:2], metrics()["sink"], "sink", before, previous_step=3)
    same, fell = _cell(canvas, now.shape, 0, 0, "change"), _cell(canvas, now.shape, 1, 2, "change")
    assert same.min() > 235  # white: no change
    assert fell[2] > fell[0] + 60  # blue: lower than before
    assert any("change since step 3" in t.text for t in canvas.texts)


def test_bounded_size():
    stats = _stats(48, 64)
    rng = np.random.default_rng(0)
    for s in stats:
        s.entropy_norm[:] = rng.random(64)
    pictures = render_stats(stats, {s.layer: np.zeros(64) for s in stats}, 7, (3, _stats(48, 64), {}))
    assert [p.metric for p in pictures] == list(STATS_METRICS)
    for p in pictures:
        height, width, _ = p.image.shape
        assert height <= 800 and width <= 1500, (p.metric, p.image.shape)
    small = _stats(12, 12)
    pictures = render_stats(small, None, 1, (0, small, {}))  # its time: benchmarks/bench_render.py
    assert stats_matrix(small, "sink").shape == (12, 12)
    assert "drift" not in [p.metric for p in pictures]  # no drift at a first capture


def test_real_fit_logs_a_stats_matrix_per_capture(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=VOCAB, plots=["stats"])], max_epochs=3)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    tags = Tags()
    shown = {*STATS_METRICS, "max_logit"}  # attention health's matrix is a stats picture too
    assert set(events.Tags()["images"]) == {tags.stats_picture(m) for m in shown}
    images = events.Images(tags.stats_picture("entropy_norm"))
    assert [e.step for e in images] == [2, 5, 8]
    assert [e.step for e in events.Images(tags.stats_picture("drift"))] == [5, 8]
    picture = imread(io.BytesIO(images[-1].encoded_image_string), format="png")[..., :3]
    assert picture.std() > 0.05 and len({(e.width, e.height) for e in images}) == 1

    # the Attention tab's overview: per capture, the matrices of every stats picture drawn
    overviews = [decode_overview(e.tensor_proto.string_val[0]) for e in events.Tensors(tags.tab_overview)]
    assert [(o.step, o.epoch) for o in overviews] == [(2, 0), (5, 1), (8, 2)]
    assert [m.name for m in overviews[-1].metrics] == [*STATS_METRICS, "max_logit"]
    assert overviews[0].layers == ("model.h.0.attn", "model.h.1.attn")
    for o in overviews:  # each row's mean over heads is the layer's logged scalar
        entropy = next(m for m in o.metrics if m.name == "entropy_norm")
        for layer, row in zip(o.layers, entropy.values, strict=True):
            (scalar,) = [
                e.value for e in events.Scalars(tags.stat("entropy_norm", layer)) if e.step == o.step
            ]
            assert abs(row.mean() - scalar) < 1e-5
    blob = events.Tensors(Tags().tab(0, "model.h.1.attn"))[-1].tensor_proto.string_val[0]
    assert (decode_map(blob).step, decode_map(blob).epoch) == (8, 2)  # the epoch travels with the step


def test_markers_reach_the_tab_in_one_record_per_step(tmp_path):
    tags = Tags()
    out = Outputs(step=12)
    add_markers(out, tags, ["phase change: layer 1", "induction heads"])
    add_markers(Outputs(step=13), tags, [])  # nothing to mark: nothing written
    sink = TensorBoardSink(tmp_path)
    sink.write(out)
    sink.close()
    (event,) = read_events(tmp_path).Tensors(tags.tab_markers)
    assert event.step == 12
    assert decode_markers(event.tensor_proto.string_val[0]) == [
        Marker(12, "phase change: layer 1"),
        Marker(12, "induction heads"),
    ]
