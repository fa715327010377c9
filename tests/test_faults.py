"""Faults a careful user can cause, each ending cleanly: a full disk, crafted capture files, module
names that clash after cleaning, arguments that cannot work, user callbacks that raise. Through the
public surface: Trainer fits, event files and capture files on disk, warnings, the CLI as a process."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from lightning_models import (
    VOCAB,
    LitGPT,
    LitPrevious,
    PreviousTokenAttention,
    make_trainer,
    read_events,
    token_loader,
)
from torch import nn

from lightning_attnviz import AttentionMonitor, capture_attention
from lightning_attnviz.analysis.views import AttentionView
from lightning_attnviz.sinks.base import Outputs
from lightning_attnviz.sinks.capture_file import load_capture, save_capture
from lightning_attnviz.sinks.tensorboard import TensorBoardSink
from lightning_attnviz.tab.record import decode_map, encode_map

HEATMAP = "attention/sample_0/model.h.0.attn/heatmap"
ENTROPY = "attention_stats/entropy/model.h.0.attn/mean"
ROOT = Path(__file__).resolve().parents[1]


def _monitor_messages(record) -> list[str]:
    return [str(w.message) for w in record if "AttentionMonitor" in str(w.message)]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_attnviz", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (mounting needs root, as on the CI machines; elsewhere the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here ({mounted.stderr.strip()}); CI runs this as root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(path: Path) -> None:
    """Take every free byte of the disk holding ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 12))
    except OSError:
        pass
    finally:
        os.close(fd)


class FillDisk(pl.Callback):
    def __init__(self, filler: Path, at_step: int) -> None:
        self.filler, self.at_step = filler, at_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at_step:
            _fill(self.filler)


def test_a_full_disk_is_one_warning_and_leaves_nothing_partial(small_disk):
    trainer = make_trainer(
        small_disk,
        [AttentionMonitor(tokens=VOCAB, every_n_steps=1), FillDisk(small_disk / "filler", at_step=2)],
        max_epochs=3,
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    messages = _monitor_messages(record)
    full = [m for m in messages if "disk is full" in m]
    assert len(full) == 1, messages  # 7 captures after the disk filled: told once
    assert "could not be written" in full[0] and "No space left on device" in full[0], full[0]
    assert not [m for m in messages if "rest of the capture is logged" in m or "saving" in m], messages

    log_dir = small_disk / "tb" / "version_0"
    left = [p.name for p in log_dir.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert left == []
    for path in (log_dir / "attention_captures").glob("step_*.npz"):
        load_capture(path)  # every capture file left is whole
    (small_disk / "filler").unlink()
    events = read_events(log_dir)  # the event files stay readable: no torn record
    images = [e.step for e in events.Images(HEATMAP)] if HEATMAP in events.Tags()["images"] else []
    scalars = [e.step for e in events.Scalars(ENTROPY)] if ENTROPY in events.Tags()["scalars"] else []
    assert images == scalars and len(images) < 9  # whole captures only, and some were lost


def _outputs(step: int, kib: int) -> Outputs:
    out = Outputs(step)
    out.scalars["s"] = float(step)
    out.text["note"] = "x" * (kib << 10)  # some bulk, so that a write can fail midway
    return out


def test_an_event_file_that_hits_a_full_disk_keeps_earlier_and_later_captures(small_disk):
    sink = TensorBoardSink(small_disk / "run")
    sink.write(_outputs(1, 64))
    _fill(small_disk / "filler")
    with pytest.raises(OSError, match="No space"):
        sink.write(_outputs(2, 512))
    (small_disk / "filler").unlink()
    sink.write(_outputs(3, 64))  # space again: a torn record would hide this one
    sink.close()
    events = read_events(small_disk / "run")
    assert [e.step for e in events.Scalars("s")] == [1, 3]


# -- the CLI on a folder with files it cannot read ---------------------------------------------------


def _view(layer: str = "blocks.0.attn") -> AttentionView:
    labels = [f"t{i}" for i in range(4)]
    return AttentionView(layer, 0, np.full((2, 4, 4), 0.25, dtype=np.float32), None, labels, list(labels))


def test_gif_skips_and_names_each_unreadable_file_and_draws_the_rest(tmp_path):
    captures = tmp_path / "attention_captures"
    for step in (1, 2, 3):
        save_capture(captures / f"step_{step:08d}.npz", [_view()], step=step, epoch=0)
    whole = (captures / "step_00000003.npz").read_bytes()
    (captures / "step_00000004.npz").write_bytes(whole[: len(whole) // 2])  # a write cut short
    (captures / "step_00000005.npz").mkdir()  # a folder named like a capture
    _six_members_of_400_mb(captures / "step_00000006.npz")
    out = tmp_path / "a.gif"
    result = _cli("gif", captures, "--layer", "blocks.0.attn", "--out", out)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("skipped: ") for line in lines), lines
    for step, line in zip((4, 5, 6), lines, strict=True):
        assert f"step_{step:08d}.npz" in line, line
    assert "3 frames" in result.stdout
    from PIL import Image

    assert Image.open(out).n_frames == 3


def test_gif_with_nothing_readable_is_one_error(tmp_path):
    (tmp_path / "step_00000001.npz").write_bytes(b"not a zip")
    result = _cli("gif", tmp_path, "--layer", "blocks.0.attn", "--out", tmp_path / "a.gif")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error:") and "1 file(s) skipped" in result.stderr
    assert not (tmp_path / "a.gif").exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--fps", "nan"], "--fps"),
        (["--fps", "0.0001"], "--fps"),
        (["--fps", "inf"], "--fps"),
        (["--out", "a.txt"], "--out"),
    ],
    ids=["fps-nan", "fps-tiny", "fps-inf", "out-txt"],
)
def test_gif_refuses_options_it_cannot_use(tmp_path, args, option):
    save_capture(tmp_path / "step_00000001.npz", [_view()], step=1, epoch=0)
    result = _cli("gif", tmp_path, "--layer", "blocks.0.attn", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: argument {option}:" in result.stderr.splitlines()[-1], result.stderr


# -- crafted capture files -----------------------------------------------------------------------


def _deflated(prefix: bytes, zeros: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``prefix`` then ``zeros`` zero bytes and its CRC-32, from one compressed
    16 MiB block repeated (full flushes make the blocks independent): gigabytes in a few MB, quickly."""
    chunk = 16 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(zeros, chunk)
    crc = zlib.crc32(prefix)
    for _ in range(count):
        crc = zlib.crc32(bytes(chunk), crc)
    crc = zlib.crc32(bytes(rest), crc)
    return head + block * count + c.compress(bytes(rest)) + c.flush(), crc


def _write_zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> None:
    """A zip of already deflated ``(name, data, crc, size)`` members."""
    central = b""
    with open(path, "wb") as f:
        for name, data, crc, size in members:
            offset, raw = f.tell(), name.encode()
            fields = (crc, len(data), size, len(raw))
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, *fields, 0) + raw + data)
            central += struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, *fields, 0, 0, 0, 0, 0, offset
            )
            central += raw
        start = f.tell()
        f.write(
            central
            + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), start, 0)
        )


def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": dtype, "fortran_order": False, "shape": shape})
    return out.getvalue()


def _member(name: str, array: np.ndarray) -> tuple[str, bytes, int, int]:
    out = io.BytesIO()
    np.save(out, array)
    data = out.getvalue()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return name, c.compress(data) + c.flush(), zlib.crc32(data), len(data)


def _meta(grid: dict | None = None) -> tuple[str, bytes, int, int]:
    labels = ["CLS", "p0", "p1", "p2", "p3"]
    meta = {
        "format": "lightning_attnviz.capture/2",
        "step": 1,
        "epoch": 0,
        "views": [{"sample": 0, "layer": "a", "q_labels": labels, "k_labels": labels, "note": ""}],
        "grid": grid,
    }
    return _member("meta.npy", np.array(json.dumps(meta)))


def _six_members(path: Path, each: int) -> None:
    """Six float16 members of ``each`` bytes of zeros: a few MB on disk."""
    header = _npy_header("<f2", (1, 10_000, each // 20_000))
    data, crc = _deflated(header, each)
    _write_zip(path, [_meta(), *[(f"w{n}.npy", data, crc, len(header) + each) for n in range(6)]])


def _six_members_of_400_mb(path: Path) -> None:
    """The reported file: 2.3 MB on disk, six members of 400 MB, 2.4 GB decoded in all."""
    _six_members(path, 400_000_000)


def _six_members_of_200_mb(path: Path) -> None:
    """Each member under the per-member limit (256 MiB), 1.2 GB decoded in all."""
    _six_members(path, 200_000_000)


def _header_of_80_gb(path: Path) -> None:
    """A member whose own header declares 80 GB while the archive holds 100 bytes of it."""
    header = _npy_header("<f2", (2, 200_000, 100_000))
    data, crc = _deflated(header, 100)
    _write_zip(path, [_meta(), ("w0.npy", data, crc, len(header) + 100)])


def _image(path: Path, side: int) -> None:
    """A ``side``² RGB image of zeros, with a patch grid that covers it."""
    header = _npy_header("|u1", (side, side, 3))
    data, crc = _deflated(header, side * side * 3)
    grid = {"grid": [2, 2], "prefix_tokens": 1, "patch_size": [side // 2, side // 2]}
    weights = _member("w0.npy", np.full((2, 5, 5), 0.2, dtype=np.float16))
    _write_zip(path, [_meta(grid), weights, ("img0.npy", data, crc, len(header) + side * side * 3)])


def _image_of_13000_squared(path: Path) -> None:
    """The reported image: 13000² (507 MB) in 0.5 MB."""
    _image(path, 13_000)


def _image_of_3000_squared(path: Path) -> None:
    """27 MB, under every size limit, but larger than an image the CLI draws."""
    _image(path, 3_000)


def _grid_of_a_million_pixels_a_side(path: Path) -> None:
    """A small file whose patch grid would make drawing upsample heat to 2·10⁶ pixels a side."""
    grid = {"grid": [2, 2], "prefix_tokens": 1, "patch_size": [1_000_000, 1_000_000]}
    image = _member("img0.npy", np.zeros((8, 8, 3), dtype=np.uint8))
    _write_zip(path, [_meta(grid), _member("w0.npy", np.full((2, 5, 5), 0.2, dtype=np.float16)), image])


_PEAK = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(result.stderr)
sys.stdout.write(f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n")
sys.exit(result.returncode)
"""


@pytest.mark.parametrize(
    "make",
    [
        _six_members_of_400_mb,
        _six_members_of_200_mb,
        _header_of_80_gb,
        _image_of_13000_squared,
        _image_of_3000_squared,
        _grid_of_a_million_pixels_a_side,
    ],
)
def test_crafted_capture_files_are_one_error_line_at_bounded_memory(tmp_path, make):
    path = tmp_path / "step_00000001.npz"
    make(path)
    assert path.stat().st_size < 3_000_000
    cli = [sys.executable, "-m", "lightning_attnviz", "render", str(path), "--out", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, "-c", _PEAK, *cli], capture_output=True, text=True, timeout=300)
    peak_kib = int(result.stdout.strip().splitlines()[-1])  # the CLI's own peak resident memory
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], lines
    assert peak_kib < 1 << 20, f"the CLI reached {peak_kib / 1024:.0f} MiB"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


_AXIS = {"alone": 1, "grid": None, "sizes": [1, 1], "factor": 1}  # a valid axis of 2 cells


@pytest.mark.parametrize(
    "change",
    [
        lambda h: h.update(heads="2"),
        lambda h: h.update(heads=-2, q=-2),
        lambda h: h.update(mask={"rows": 1}),
        lambda h: h.pop("q_labels"),
        lambda h: h.update(scales=[1.0]),
        lambda h: h.update(blocks={"q": {"alone": 1}, "k": None}),
        lambda h: h.update(blocks={"q": _AXIS, "k": {**_AXIS, "sizes": [1, 1, 1]}}),
        lambda h: h.update(blocks={"q": {**_AXIS, "grid": [2, 2, 1]}, "k": _AXIS}),
        lambda h: h.update(blocks={"q": {**_AXIS, "alone": 3}, "k": _AXIS}),
    ],
    ids=[
        "heads-string", "negative-counts", "mask-without-heads", "no-labels", "too-few-scales",
        "blocks-incomplete", "blocks-sizes", "blocks-grid", "blocks-alone",
    ],
)
def test_the_tab_record_decoder_refuses_malformed_headers_with_a_value_error(change):
    """Each crafted header is one ValueError (the tab's record.js refuses the same; tests/js)."""
    blob = encode_map(
        layer="l",
        sample=0,
        step=0,
        weights=np.full((2, 2, 2), 0.5),
        visible=None,
        q_labels=["a", "b"],
        k_labels=["a", "b"],
    )
    n = int.from_bytes(blob[:4], "little")
    header = json.loads(blob[4 : 4 + n])
    change(header)
    raw = json.dumps(header).encode()
    with pytest.raises(ValueError):
        decode_map(len(raw).to_bytes(4, "little") + raw + blob[4 + n :])


# -- keys that clash ------------------------------------------------------------------------------


class LitClash(LitPrevious):
    """``attn`` called twice per forward (its second call keyed ``attn#1``) beside a module ``attn_1``."""

    def __init__(self) -> None:
        super().__init__()
        self.attn_1 = PreviousTokenAttention()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn_1(self.attn(self.attn(self.embed(idx)))))


def test_a_repeated_call_beside_a_module_named_like_it_gets_three_tags(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"], health=False)])
    trainer.fit(LitClash(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    layers = ("attn", "attn#1", "attn_1")
    heatmaps = sorted(t for t in events.Tags()["images"] if t.endswith("/heatmap") and "sample_0" in t)
    assert heatmaps == sorted(f"attention/sample_0/{layer}/heatmap" for layer in layers)
    for layer in layers:  # one value per step each: no layer's scalars dropped under another's tag
        assert [e.step for e in events.Scalars(f"attention_stats/entropy/{layer}/mean")] == [2, 5]
        assert [e.step for e in events.Images(f"attention/sample_0/{layer}/heatmap")] == [2, 5]
    saved = load_capture(Path(trainer.logger.log_dir) / "attention_captures" / "step_00000005.npz")
    assert sorted({v.layer for v in saved.views}) == sorted(layers)
    out = tmp_path / "pictures"
    result = _cli(
        "render", Path(trainer.logger.log_dir) / "attention_captures" / "step_00000005.npz", "--out", out
    )
    assert result.returncode == 0, result.stderr
    assert (
        len([p for p in out.iterdir() if p.name.startswith("attention__sample_0_") and "heatmap" in p.name])
        == 3
    )


class _Named(nn.Module):
    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({name: PreviousTokenAttention() for name in names})


def test_a_repeated_call_never_takes_the_key_of_a_module_named_with_a_hash():
    model = _Named(["attn", "attn#1"])
    x = torch.randn(2, 5, 16)
    with capture_attention(model) as cap:
        model.blocks["attn"](model.blocks["attn"](x))
        model.blocks["attn#1"](x)
    assert list(cap.maps) == ["blocks.attn", "blocks.attn#1#", "blocks.attn#1"]
    assert [r.module for r in cap.records.values()] == ["blocks.attn", "blocks.attn", "blocks.attn#1"]


class LitSpaced(LitPrevious):
    """Two modules whose names clean to one tag name: ``a b`` and ``a_b``."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = nn.ModuleDict({"a b": PreviousTokenAttention(), "a_b": PreviousTokenAttention()})

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        return self.head(self.pair["a_b"](self.pair["a b"](x)))


def test_two_names_that_clean_alike_get_two_tags_and_a_warning(tmp_path):
    trainer = make_trainer(
        tmp_path, [AttentionMonitor(plots=["heatmap"], modules=["pair.a b", "pair.a_b"])], max_epochs=1
    )
    with pytest.warns(RuntimeWarning, match=r"would share the tag name 'pair.a_b'; 'pair.a_b' is logged as"):
        trainer.fit(LitSpaced(), token_loader(), token_loader(seed=1))
    scalars = [t for t in read_events(trainer.logger.log_dir).Tags()["scalars"] if "/entropy/" in t]
    assert len(scalars) == 2 and "attention_stats/entropy/pair.a_b/mean" in scalars, scalars


# -- arguments that cannot work ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(every_n_epochs=0), r"`every_n_epochs=0` .* nothing would ever be captured"),
        (
            dict(sample_input=torch.zeros(0, 10, dtype=torch.long)),
            r"`sample_input` must hold at least one row",
        ),
        (dict(sample_input={"x": torch.zeros(0, 10)}), r"`sample_input` must hold at least one row"),
        (
            dict(relevance_target=lambda out: out.sum()),
            r"`relevance_target` is only used with `relevance=True`",
        ),
    ],
)
def test_arguments_that_cannot_work_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttentionMonitor(**kwargs)


def test_epoch_captures_off_with_step_captures_is_accepted():
    assert AttentionMonitor(every_n_epochs=0, every_n_steps=5).config.every_n_steps == 5
    AttentionMonitor(every_n_epochs=0, log_sanity_check=True)


def test_heads_and_plots_that_cannot_be_drawn_are_said_once_at_setup(tmp_path):
    monitor = AttentionMonitor(heads=[1, 5], plots=["heatmap", "overlay", "rollout"], layers=[0, 7])
    trainer = make_trainer(tmp_path, [monitor])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    messages = _monitor_messages(record)
    plots = [m for m in messages if "`plots`" in m]
    heads = [m for m in messages if "`heads=[1, 5]`" in m]
    layers = [m for m in messages if "`layers=[0, 7]`" in m]
    assert len(plots) == 1 and "['overlay', 'rollout']" in plots[0] and "patch grid" in plots[0], messages
    assert len(heads) == 1 and "head 5 in 'model.h.0.attn' (4 heads), 'model.h.1.attn' (4 heads)" in heads[0]
    assert "head 1" not in heads[0]
    assert len(layers) == 1 and "[7] match none of the 2 captured layers" in layers[0], messages
    tags = read_events(trainer.logger.log_dir).Tags()["images"]
    assert "attention/sample_0/model.h.0.attn/head_1" in tags and HEATMAP in tags  # what can be drawn is
    assert not [t for t in tags if "head_5" in t or "overlay" in t or "rollout" in t or "model.h.1" in t]


class QuietAttention(nn.Module):
    """Two causal heads, kept where discovery does not look for a head count (``nh``)."""

    def __init__(self, d: int = 16, nh: int = 2) -> None:
        super().__init__()
        self.qkv, self.nh = nn.Linear(d, 3 * d), nh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (t.view(B, L, self.nh, -1).transpose(1, 2) for t in self.qkv(x).split(D, dim=2))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).reshape(B, L, D)


class LitQuiet(LitPrevious):
    def __init__(self) -> None:
        super().__init__()
        self.attn = QuietAttention()


def test_heads_a_module_does_not_declare_are_checked_at_the_first_capture(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(heads=[1, 5], plots=["heatmap"])], max_epochs=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(LitQuiet(), token_loader(), token_loader(seed=1))
    heads = [m for m in _monitor_messages(record) if "`heads=" in m]
    assert len(heads) == 1 and "head 5 in 'attn' (2 heads)" in heads[0] and "head 1" not in heads[0], heads
    assert "attention/sample_0/attn/head_1" in read_events(trainer.logger.log_dir).Tags()["images"]


# -- user callbacks that raise -------------------------------------------------------------------


def _broken_predicate(name, module):
    return 1 / 0


def test_a_modules_predicate_that_raises_says_so_with_its_exception_chained(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(modules=_broken_predicate)])
    with pytest.raises(RuntimeError, match=r"`modules`: the predicate raised ZeroDivisionError") as caught:
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    with pytest.raises(RuntimeError, match="`modules`") as direct:
        with capture_attention(LitGPT(), modules=_broken_predicate):
            pass
    assert isinstance(direct.value.__cause__, ZeroDivisionError)


def test_tokens_that_raise_name_the_argument_and_where_it_raised(tmp_path):
    def tokens(ids):
        return {}[ids[0]]

    trainer = make_trainer(tmp_path, [AttentionMonitor(tokens=tokens, plots=["heatmap"])], max_epochs=1)
    with pytest.warns(RuntimeWarning, match=r"`tokens` failed to label the samples \(KeyError") as record:
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    said = [m for m in _monitor_messages(record) if "`tokens`" in m]
    assert len(said) == 1 and f"{__file__}:" in said[0] and "in tokens" in said[0], said
    assert trainer.state.finished
