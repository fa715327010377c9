"""The CLI draws a run's saved captures again through the monitor's own code: every picture the run
logged that a capture file can give back, pixel for pixel (read back from the event file), and for
every other kind it says why."""

import io

import numpy as np
import pytest
from lightning_models import LitGPT, LitTimmViT, image_loader, make_trainer, read_events, token_loader
from PIL import Image

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.__main__ import _file_name, main
from lightning_attnviz.capture.grid import PatchGrid
from lightning_attnviz.sinks.capture_file import load_capture
from lightning_attnviz.sinks.tags import Tags


def _vit(readout: str) -> LitTimmViT:
    """A 64-px timm ViT read out by its CLS token (with two registers beside it), or by an attention
    pool (``global_pool="map"``) without one."""
    extra = dict(reg_tokens=2) if readout == "cls" else dict(global_pool="map", class_token=False)
    return LitTimmViT(img_size=64, **extra)


PLOTS = ["heatmap", "heads", "atlas", "overlay", "overlay_heads", "rollout", "evolution", "stats"]
FROM_A_FILE = {"heatmap", "heads", "atlas", "overlay", "overlay_heads", "rollout", "head_1"}


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _fit(tmp_path, readout: str, **kwargs):
    grid = PatchGrid((8, 8), 0, (8, 8)) if readout == "pool" else "auto"
    monitor = AttentionMonitor(
        plots=PLOTS,
        heads=[1],
        image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
        rollout_fusion="max",  # not the defaults: the redraw must read the run's settings
        rollout_discard=0.5,
        image_grid=grid,
        **kwargs,
    )
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    loader = image_loader(size=(64, 64))
    trainer.fit(_vit(readout), loader, image_loader(size=(64, 64), seed=1))
    captures = sorted((tmp_path / "tb" / "version_0" / Tags().captures_dir).glob("step_*.npz"))
    return read_events(trainer.logger.log_dir), captures


def _compare(events, capture, out, capsys) -> tuple[set[str], str]:
    """Redraw ``capture`` with the CLI; every file written equals the logged image of its tag at the
    capture's step. Returns the kinds drawn and what the CLI said on stderr."""
    assert main(["render", str(capture), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    step, drawn = load_capture(capture).step, set()
    for tag in events.Tags()["images"]:
        logged = [e for e in events.Images(tag) if e.step == step]
        target = out / _file_name(tag, ".png")
        if tag.rsplit("/", 1)[-1] in FROM_A_FILE:
            assert target.exists(), tag
        if not target.exists():
            continue
        (event,) = logged
        assert np.array_equal(_png(event.encoded_image_string), _png(target.read_bytes())), tag
        assert str(target) in printed.out
        drawn.add(tag.rsplit("/", 1)[-1])
    return drawn, printed.err


@pytest.mark.parametrize("readout", ["cls", "pool"])
def test_render_redraws_a_vit_runs_pictures_pixel_for_pixel(tmp_path, capsys, readout):
    events, captures = _fit(tmp_path, readout)
    assert len(captures) == 2
    for n, capture in enumerate(captures):
        drawn, said = _compare(events, capture, tmp_path / f"png{n}", capsys)
        assert drawn == FROM_A_FILE
        assert "evolution: not drawn: it shows the captures before this one" in said
        assert "stats: not drawn:" in said
    if readout == "pool":
        assert "attention/sample_0/vit.attn_pool/overlay" in events.Tags()["images"]


def test_maps_pooled_while_capturing_draw_overlays_and_say_why_not_rollout(tmp_path, capsys):
    with pytest.warns(RuntimeWarning, match=r"rollout needs every layer's exact map"):
        events, captures = _fit(tmp_path, "cls", store_tokens=40)
    tags = set(events.Tags()["images"])
    assert "attention/sample_0/rollout" not in tags and "attention/sample_0/vit.blocks.1.attn/overlay" in tags
    drawn, said = _compare(events, captures[-1], tmp_path / "png", capsys)
    assert {"overlay", "overlay_heads", "heatmap"} <= drawn and "rollout" not in drawn
    assert "rollout: not drawn: rollout needs every layer's exact map" in said


def test_render_of_a_text_run_asked_for_overlays_says_why_and_fails(tmp_path, capsys):
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"])], max_epochs=1)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    (capture,) = (tmp_path / "tb" / "version_0" / Tags().captures_dir).glob("step_*.npz")
    assert main(["render", str(capture), "--plots", "overlay", "rollout", "--out", str(tmp_path / "x")]) == 1
    said = capsys.readouterr().err
    assert "overlay: not drawn: the run had no patch grid" in said
    assert "rollout: not drawn: the run had no patch grid" in said and "no picture drawn" in said
    assert not list((tmp_path / "x").glob("*.png"))
