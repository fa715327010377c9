"""Vector figures from saved captures: ``render --format svg|pdf`` draws the pictures' own layout with
matplotlib, text as text, cells as the same pixels as the PNG's, and changes no rcParams."""

import base64
import io
import re
import xml.etree.ElementTree as ET
import zlib

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from test_render import view

from lightning_attnviz.__main__ import main
from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.render import vector
from lightning_attnviz.render.layout import keep_canvases
from lightning_attnviz.render.maps import draw_arrows, draw_heatmap
from lightning_attnviz.sinks.capture_file import save_capture

SVG = "{http://www.w3.org/2000/svg}"
LAYER = "model.encoder.layers.3.self_attn"


def _capture(tmp_path, vision: bool = False):
    """A saved capture: two layers of a text model, or a ViT's layer on a 2×2 grid with its image."""
    if not vision:
        views = [view(8, heads=2, layer=LAYER), view(8, heads=2, layer="model.encoder.layers.4.self_attn")]
        return save_capture(tmp_path / "step_00000012.npz", views, step=12, epoch=3)
    rng = np.random.default_rng(0)
    weights = rng.random((2, 5, 5)).astype(np.float32)
    weights /= weights.sum(-1, keepdims=True)
    labels = ["CLS", "p0", "p1", "p2", "p3"]
    v = AttentionView("vit.blocks.0.attn", 0, weights, None, labels, labels)
    grid = PatchGrid((2, 2), prefix_tokens=1, patch_size=(8, 8))
    image = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    return save_capture(tmp_path / "step_00000005.npz", [v], step=5, epoch=1, grid=grid, images=[image])


def _svg_texts(path) -> list[str]:
    return [el.text or "" for el in ET.parse(path).getroot().iter(f"{SVG}text")]


def _pdf_texts(data: bytes) -> list[str]:
    """The strings shown by each text object of a PDF's content streams (a TJ array's parts joined)."""
    texts = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            content = zlib.decompress(stream)
        except zlib.error:
            continue
        for block in re.findall(rb"BT(.*?)ET", content, re.S):
            parts = re.findall(rb"\(((?:\\.|[^\\)])*)\)", block)
            texts.append(b"".join(parts).replace(b"\\(", b"(").replace(b"\\)", b")").decode("latin-1"))
    return texts


@pytest.mark.parametrize("fmt", ["svg", "pdf"])
def test_render_writes_text_as_text_and_embeds_fonts(tmp_path, fmt):
    before = dict(matplotlib.rcParams)
    out = tmp_path / fmt
    kinds = ["--plots", "heatmap", "heads", "arrows", "atlas"]  # asked for: the run's kinds are the default
    assert main(["render", str(_capture(tmp_path)), "--out", str(out), "--format", fmt, *kinds]) == 0
    written = sorted(out.glob(f"*.{fmt}"))
    assert len(written) == 2 * 3 + 1  # 2 layers × heatmap, heads, arrows; the atlas
    heatmap = out / f"attention__sample_0__{LAYER}__heatmap.{fmt}"
    if fmt == "svg":
        texts = _svg_texts(heatmap)
        assert LAYER in texts and "sample 0 · step 12 · head mean" in texts  # the title, as text
        assert "tok3" in texts and "1/n  uniform" in texts  # token labels and the colour bar's ticks
        ids = [el.get("id") or "" for el in ET.parse(heatmap).getroot().iter()]
        assert not [i for i in ids if i.startswith("DejaVu")]  # no text drawn as glyph outlines
    else:
        data = heatmap.read_bytes()
        assert b"/CharProcs" in data and b"/FontDescriptor" in data and b"DejaVuSans" in data  # embedded
        assert b"/ToUnicode" in data  # searchable
        assert LAYER in _pdf_texts(data)
    assert dict(matplotlib.rcParams) == before  # nothing global changed


def test_the_figure_is_the_pictures_layout_cells_pixel_for_pixel(tmp_path):
    v = view(12, heads=2, layer=LAYER)
    canvas = draw_heatmap(*v.head_mean(), v.q_labels, v.k_labels, (LAYER, "sample 0 · step 1"))
    path = tmp_path / "h.svg"
    vector.save(canvas, path, "svg")
    root = ET.parse(path).getroot()
    assert root.get("width") == f"{canvas.width}pt" and root.get("height") == f"{canvas.height}pt"
    (image,) = root.iter(f"{SVG}image")
    assert "pixelated" in image.get("style", "")  # cells stay sharp squares when zoomed
    href = image.get("{http://www.w3.org/1999/xlink}href") or image.get("href")
    raster = np.asarray(Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))).convert("RGB"))
    box = canvas.boxes["map"]
    cells = canvas.image[box.y : box.y + box.h, box.x : box.x + box.w]
    assert raster.shape == canvas.image.shape
    assert np.array_equal(raster[box.y : box.y + box.h, box.x : box.x + box.w], cells)  # the same colours
    # each text where the PNG has it: drawn with Agg, the figure's text ink sits on the PNG's text boxes
    fig = vector.figure(canvas)
    agg = FigureCanvasAgg(fig)
    agg.draw()
    drawn = np.asarray(agg.buffer_rgba())[..., :3]
    assert drawn.shape == canvas.image.shape
    title = canvas.boxes["title"]
    ink = (drawn[..., :3].astype(int).sum(-1) < 400)  # dark pixels
    inside = ink[title.y : title.y + title.h, title.x : title.x + title.w].sum()
    assert inside > 0.9 * ink[: title.y + title.h + 2].sum()  # the title's ink within its box
    assert {t.text for t in canvas.texts} <= {t.get_text() for t in fig.axes[0].texts}


def test_arrows_are_vector_lines(tmp_path):
    v = view(10, heads=1, layer=LAYER)
    canvas = draw_arrows(v.weights[0], v.q_labels, v.k_labels, "arrows")
    (segments,) = canvas.segments
    assert len(segments.lines) > 5 and all(0 < a <= 1 for *_, a in segments.lines)
    background = canvas.background()
    band = canvas.boxes["lines"]
    assert (background[band.y : band.y + band.h, band.x : band.x + band.w] == 255).all()  # no raster lines
    assert (canvas.image[band.y : band.y + band.h, band.x : band.x + band.w] < 255).any()  # the PNG has them
    path = tmp_path / "a.svg"
    vector.save(canvas, path, "svg")
    assert len(ET.parse(path).getroot().findall(f".//{SVG}path")) >= len(segments.lines)


def test_vision_overlays_are_vector_too(tmp_path):
    out = tmp_path / "vision"
    assert main(["render", str(_capture(tmp_path, vision=True)), "--out", str(out), "--format", "svg",
                 "--plots", "overlay", "rollout"]) == 0  # fmt: skip
    overlay = out / "attention__sample_0__vit.blocks.0.attn__overlay.svg"
    assert "vit.blocks.0.attn" in _svg_texts(overlay)
    assert "attention rollout" in _svg_texts(out / "attention__sample_0__rollout.svg")


def test_every_picture_finished_inside_the_block_is_kept_and_only_there():
    v = view(8, heads=2)
    with keep_canvases() as kept:
        canvas = draw_heatmap(*v.head_mean(), v.q_labels, v.k_labels, "a")
    draw_heatmap(*v.head_mean(), v.q_labels, v.k_labels, "b")  # outside: not kept
    assert kept == [canvas]
