"""Pictures: bounded whatever the input, text shortened and never clipped, an honest colour scale, pixels
that give back the planted pattern, and nothing global touched.

Expected colours come from the colormap table and the scale's definition, never from the picture code's
own helpers; cells are sampled at their centres inside the map box the layout reports.
"""

from __future__ import annotations

import io
import threading
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.render import layout
from lightning_attnviz.render.maps import (
    MASKED_RGB,
    TOP_RGB,
    UNIFORM_RGB,
    Strip,
    arrows,
    atlas,
    draw_arrows,
    draw_atlas,
    draw_evolution,
    draw_head_grid,
    draw_heatmap,
    encode_png,
    head_grid,
    heatmap,
    render_views,
)
from lightning_attnviz.render.overlay import ALPHA, overlay, overlay_grid
from lightning_attnviz.render.stats import draw_stats, metrics

LUT = (matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
LONG = "model.bert.encoder.layer.11.attention.self.with.a.much.longer.wrapper.name.around.it.query_key"
BOUND = 1600  # pixels any picture stays within


def cells(canvas: layout.Canvas, q: int, k: int) -> np.ndarray:
    """The colour at the centre of each cell of the map, ``(q, k, 3)``."""
    box = canvas.boxes["map"]
    ys = (box.y + (np.arange(q) + 0.5) * box.h / q).astype(int)
    xs = (box.x + (np.arange(k) + 0.5) * box.w / k).astype(int)
    return canvas.image[ys[:, None], xs[None, :]]


def causal(length: int) -> np.ndarray:
    return np.tril(np.ones((length, length), dtype=bool))


def previous_token(length: int) -> np.ndarray:
    weights = np.eye(length, k=-1, dtype=np.float32)
    weights[0, 0] = 1.0
    return weights


def view(length: int = 8, heads: int = 4, layer: str = "blocks.0.attn") -> AttentionView:
    rng = np.random.default_rng(0)
    logits = np.where(causal(length), rng.normal(size=(heads, length, length)), -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    labels = [f"tok{i}" for i in range(length)]
    return AttentionView(layer, 0, weights.astype(np.float32), causal(length)[None], labels, labels)


def assert_bounded(image: np.ndarray) -> None:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert 100 <= image.shape[0] <= BOUND and 100 <= image.shape[1] <= BOUND, image.shape


def assert_texts_inside(canvas: layout.Canvas) -> None:
    for placed in canvas.texts:
        box = placed.box
        assert box.x >= 0 and box.y >= 0, placed
        assert box.x + box.w <= canvas.width and box.y + box.h <= canvas.height, placed


# -- bounded size ----------------------------------------------------------------------------------


def test_a_10000_character_label_keeps_every_picture_bounded():
    v = view()
    labels = ["x" * 10_000, *v.q_labels[1:]]
    canvas = draw_heatmap(v.weights[0], v.visible[0], labels, labels, "x" * 10_000, note="y" * 10_000)
    assert_bounded(canvas.image)
    assert_texts_inside(canvas)
    assert max(len(t.text) for t in canvas.texts) < 200
    assert_bounded(arrows(v.weights[0], labels, labels, LONG * 100))
    assert_bounded(head_grid(AttentionView(v.layer * 1000, 0, v.weights, None, labels, labels), LONG))


@pytest.mark.parametrize("draw", ["heatmap", "arrows", "heads", "atlas"])
def test_5000_tokens_keep_every_picture_bounded(draw):
    length = 5000
    weights = np.zeros((2, length, length), dtype=np.float32)
    weights[:, np.arange(length), np.arange(length)] = 1.0
    labels = [f"t{i}" for i in range(length)]
    big = AttentionView("layer", 0, weights, None, labels, labels)
    image = {
        "heatmap": lambda: heatmap(weights[0], None, labels, labels, "long"),
        "arrows": lambda: arrows(weights[0], labels, labels, "long"),
        "heads": lambda: head_grid(big, "long"),
        "atlas": lambda: atlas([big, big], "long"),
    }[draw]()
    assert_bounded(image)


# -- text --------------------------------------------------------------------------------------------


def test_long_layer_names_are_shortened_in_the_middle_and_not_clipped():
    v = view(8)  # a narrow picture: the name cannot fit whole
    canvas = draw_heatmap(*v.head_mean(), v.q_labels, v.k_labels, (LONG, "sample 0 · step 384 · head mean"))
    title = [t.text for t in canvas.texts if t.box.inside(canvas.boxes["title"])]
    assert title[1] == "sample 0 · step 384 · head mean"
    assert "…" in title[0] and title[0].startswith("model.") and title[0].endswith("query_key")
    assert title[0] != LONG
    assert_texts_inside(canvas)
    assert canvas.boxes["title"].inside(canvas.box)


def test_shorten_keeps_both_ends_of_dotted_names():
    name = "model.bert.encoder.layer.11.attention.self"
    assert layout.shorten(name, len(name)) == name
    short = layout.shorten(name, 30)
    assert len(short) <= 30 and short.startswith("model.") and short.endswith("attention.self")
    assert layout.width(layout.fit(name, 12, 150), 12) <= 150


def test_a_string_title_wraps_at_separators_and_keeps_each_part_whole():
    title = "bert.encoder.layer.1.attention.self · sample 0 · step 1234 · head mean"
    canvas = draw_heatmap(np.full((4, 4), 0.25), None, list("abcd"), list("abcd"), title)
    drawn = " ".join(t.text for t in canvas.texts if t.box.inside(canvas.boxes["title"]))
    assert "bert.encoder.layer.1.attention.self" in drawn and "step 1234 · head mean" in drawn


def test_evolution_panel_titles_do_not_overlap():
    maps = [np.full((64, 64), 1 / 64, dtype=np.float32) for _ in range(8)]
    strip = Strip(maps, steps=[32 * (i + 5) for i in range(8)], epochs=list(range(10, 18)))
    canvas = draw_evolution(strip, None, (LONG, "sample 0 · head mean"))
    names = [t for t in canvas.texts if t.text.startswith(("step", "ep ", "Δ", "352"))]
    assert {t.text for t in names} >= {"step 384", "ep 17", "Δ step", "352→384", "ep 10"}
    for i, a in enumerate(names):
        assert not any(a.box.overlaps(b.box) for b in names[i + 1 :]), a
    assert canvas.image.shape[0] >= 220
    assert_texts_inside(canvas)


def test_heads_grid_is_readable_and_labelled():
    v = view(64, heads=8)
    canvas = draw_head_grid(v, (v.layer, "sample 0 · step 1"))
    texts = {t.text for t in canvas.texts}
    assert {f"head {h}" for h in range(8)} | {"mean", "tok0"} <= texts
    assert canvas.boxes["tile 0"].w >= 64 and canvas.boxes["tile 8"].h >= 64  # a pixel a cell at least
    few = draw_head_grid(view(12, heads=4), "t")  # up to 6 tiles: one row, as wide as a card
    assert len({few.boxes[f"tile {i}"].y for i in range(5)}) == 1


# TensorBoard shows a picture at its card's size: the Images dashboard 350 px wide, Time Series within
# about 388 × 215 px (measured with a real TensorBoard in tests/e2e/tensorboard_pages.mjs).
IMAGES_CARD, SERIES_CARD = 350, (388, 215)


def _shown(canvas: layout.Canvas) -> tuple[float, float, float]:
    """The smallest text's and the largest text's height in px as the Images dashboard shows them, and
    the largest text's as Time Series shows it."""
    small, large = min(t.size for t in canvas.texts), max(t.size for t in canvas.texts)
    images = min(1.0, IMAGES_CARD / canvas.width)
    series = min(SERIES_CARD[0] / canvas.width, SERIES_CARD[1] / canvas.height)
    return small * images, large * images, large * series


@pytest.mark.parametrize(("tokens", "heads"), [(12, 4), (64, 12)])
def test_pictures_read_at_tensorboards_card_size(tokens, heads):
    """Every text of the common pictures at 7 px or more on an Images card (the titles at 8.5) and
    the titles at 7.5 px or more on a Time Series card; the pictures drawn before measured 3–5 px."""
    v = view(tokens, heads=heads, layer="model.encoder.layers.11.self_attn")
    title = (v.layer, "sample 0 · step 384 · head mean")
    strip = Strip([v.head_mean()[0]] * 8, list(range(0, 400, 50)), list(range(8)))
    stats = np.random.default_rng(0).random((12, heads))
    layers = [f"model.encoder.layers.{i}.self_attn" for i in range(12)]
    canvases = {
        "heatmap": draw_heatmap(*v.head_mean(), v.q_labels, v.k_labels, title),
        "heads": draw_head_grid(v, title),
        "arrows": draw_arrows(v.weights[0], v.q_labels, v.k_labels, title),
        "atlas": draw_atlas([view(tokens, heads, f"m.layers.{i}.attn") for i in range(6)], "step 1"),
        "evolution": draw_evolution(strip, v.head_mean()[1], title),
        "stats": draw_stats(stats, layers, metrics()["entropy_norm"], ("entropy", "step 1"), stats),
    }
    for kind, canvas in canvases.items():
        small, large, series = _shown(canvas)
        shape = (canvas.width, canvas.height)
        assert small >= 7 and large >= 8.5 and series >= 7.5, (kind, shape, small, large, series)


def test_atlas_rows_drop_the_common_prefix():
    views = [view(8, layer=f"model.bert.encoder.layer.{i}.attention.self") for i in range(12)]
    canvas = draw_atlas(views, "sample 0 · step 1")
    texts = [t.text for t in canvas.texts]
    assert "11.attention.self" in texts and "layers model.bert.encoder.layer.*" in " ".join(texts)


# -- colour scale ------------------------------------------------------------------------------------


def test_uniform_is_the_uniform_colour_and_one_hot_the_top_colour():
    weights = np.full((16, 16), 1 / 16, dtype=np.float32)
    weights[3] = 0.0
    weights[3, 5] = 1.0  # one peaked row
    canvas = draw_heatmap(weights, None, [str(i) for i in range(16)], [str(i) for i in range(16)], "t")
    got = cells(canvas, 16, 16)
    assert tuple(LUT[round(0.4 * 255)]) == UNIFORM_RGB and tuple(LUT[255]) == TOP_RGB
    assert (np.delete(got, 3, axis=0) == UNIFORM_RGB).all()
    assert (got[3, 5] == TOP_RGB).all() and (np.delete(got[3], 5, axis=0) == LUT[0]).all()
    # the same uniform colour at any length: the scale has no per-picture maximum
    small = draw_heatmap(np.full((3, 3), 1 / 3), None, list("abc"), list("abc"), "t")
    assert (cells(small, 3, 3) == UNIFORM_RGB).all()


def test_masked_cells_are_exactly_the_masked_colour():
    length = 10
    canvas = draw_heatmap(previous_token(length), causal(length), list("abcdefghij"), list("abcdefghij"), "t")
    got = cells(canvas, length, length)
    assert (got[~causal(length)] == MASKED_RGB).all()
    assert not (got[causal(length)] == MASKED_RGB).all(axis=-1).any()


def test_planted_previous_token_pattern_is_recoverable_from_the_png():
    length = 64
    labels = [f"w{i}" for i in range(length)]
    canvas = draw_heatmap(previous_token(length), causal(length), labels, labels, "prev")
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(canvas.image))))
    np.testing.assert_array_equal(decoded, canvas.image)
    canvas.image = decoded
    bright = (cells(canvas, length, length) == TOP_RGB).all(axis=-1)
    np.testing.assert_array_equal(bright, previous_token(length) > 0)


# -- global state and threads ------------------------------------------------------------------------


def all_pictures(v: AttentionView) -> list[np.ndarray]:
    strip = Strip([v.head_mean()[0]] * 3, [1, 2, 3], [0, 0, 1])
    pictures = render_views([v], 3, heads=[0], strips={(0, v.layer): strip})
    image = np.random.default_rng(1).random((32, 32, 3))
    heats = np.random.default_rng(2).random((4, 4, 4))
    return [p.image for p in pictures] + [overlay(image, heats[0], "o"), overlay_grid(image, heats, "g")]


def test_rendering_changes_no_global_state():
    filters, params = list(warnings.filters), dict(matplotlib.rcParams)
    dtype, errors = torch.get_default_dtype(), np.geterr()
    assert len(all_pictures(view(64))) == 8
    assert warnings.filters == filters and dict(matplotlib.rcParams) == params
    assert torch.get_default_dtype() == dtype and np.geterr() == errors


def test_two_threads_draw_identical_arrays():
    v = view(64, heads=8)
    expected = all_pictures(v)
    results: list[list[np.ndarray]] = [[], []]

    def work(slot: int) -> None:
        for _ in range(3):
            results[slot] = all_pictures(v)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)


def test_render_views_titles_come_from_fields():
    v = view(8, layer=LONG)
    strip = Strip([v.head_mean()[0]] * 2, [10, 20], [11, 12])
    pictures = render_views([v], 20, strips={(0, LONG): strip})
    assert [p.kind for p in pictures] == ["heatmap", "heads", "arrows", "evolution", "atlas"]
    canvas = draw_arrows(v.weights[0], v.q_labels, v.k_labels, (LONG, "sample 0"), top_k=2)
    assert canvas.boxes["title"].inside(canvas.box)


# -- overlays ----------------------------------------------------------------------------------------


def picture_checks(picture: np.ndarray, low: int = 250, high: int = 900) -> None:
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert low <= picture.shape[0] <= high and low <= picture.shape[1] <= high, picture.shape
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 20


def test_overlay_draws_the_heat_on_the_image():
    image = np.zeros((32, 32, 3))  # black: a blended pixel is alpha × the colormap colour
    heat = np.zeros((4, 4))
    heat[1, 2] = 1.0
    picture = overlay(image, heat, "CLS → patches", note="test", patch_size=(8, 8))
    picture_checks(picture)
    peak = np.round(ALPHA * LUT[255]).astype(np.uint8)  # full opacity at the maximum, over black
    ys, xs = np.nonzero((picture == peak).all(axis=-1))
    assert ys.size and ys.max() - ys.min() == xs.max() - xs.min()  # one square patch, scaled up
    assert ys.size == (ys.max() - ys.min() + 1) ** 2  # ... and nothing else at the peak colour
    bar = picture[:, xs.max() + 1 :]  # the colorbar right of the image runs the colormap, max at the top
    assert (bar == LUT[255]).all(axis=-1).any() and (bar == LUT[0]).all(axis=-1).any()


def test_overlay_of_an_even_heat_is_the_uniform_colour():
    image = np.zeros((32, 32, 3))
    picture = overlay(image, np.full((4, 4), 1 / 16), "even", patch_size=(8, 8))
    from lightning_attnviz.render.overlay import ALPHA_MIN

    alpha = ALPHA_MIN + (ALPHA - ALPHA_MIN) * 0.4
    even = np.round(alpha * np.array(UNIFORM_RGB)).astype(np.uint8)
    assert (picture == even).all(axis=-1).sum() >= 32 * 32


def test_overlay_grid_has_a_tile_per_head_and_the_mean():
    rng = np.random.default_rng(9)
    picture_checks(overlay_grid(rng.random((32, 32, 3)), rng.random((4, 4, 4)), "4 heads"))
    big = overlay_grid(rng.random((224, 224, 3)), rng.random((12, 14, 14)), "12 heads", patch_size=(16, 16))
    picture_checks(big)
    with pytest.raises(ValueError, match=r"`heats` must be \(heads, rows, cols\)"):
        overlay_grid(rng.random((32, 32, 3)), rng.random((4, 4)), "no heads")
