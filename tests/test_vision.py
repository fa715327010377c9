"""Vision building blocks: patch geometry, rollout, attention distance, unnormalize, overlays.

Every expected value is computed independently in the test (plain loops or by hand), never by the
function under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from models import hf_pair, timm_vit

from lightning_attnviz import capture_attention
from lightning_attnviz.analysis.vision import (
    cls_to_patches,
    mean_attention_distance,
    mean_received,
    query_patch,
    rollout,
)
from lightning_attnviz.capture.grid import PatchGrid, grid_from_hf, grid_from_timm
from lightning_attnviz.capture.samples import unnormalize
from lightning_attnviz.render.overlay import blend, upsample


def random_attention(rng: np.random.Generator, heads: int, length: int) -> np.ndarray:
    """Rows that sum to 1, as a softmax gives."""
    a = rng.random((heads, length, length)) ** 3  # skewed, so max/min fusion differ from mean
    return a / a.sum(axis=-1, keepdims=True)


# -- rollout ---------------------------------------------------------------------------------------


def reference_rollout(maps, fusion: str, ratio: float, prefix: int) -> list[list[float]]:
    """Abnar & Zuidema's rollout with plain loops: fuse, discard, (A + I) row-normalised, A_L·…·A_1."""
    length = maps[0].shape[-1]
    result = [[float(i == j) for j in range(length)] for i in range(length)]
    for layer in maps:
        fuse = {"mean": lambda v: sum(v) / len(v), "max": max, "min": min}[fusion]
        fused = [[fuse([float(h[i][j]) for h in layer]) for j in range(length)] for i in range(length)]
        # the smallest floor(ratio * n) entries among the n whose key is a patch (column >= prefix)
        entries = sorted((fused[i][j], i, j) for i in range(length) for j in range(prefix, length))
        for _, i, j in entries[: int(ratio * len(entries))]:
            fused[i][j] = 0.0
        a = [[fused[i][j] + (1.0 if i == j else 0.0) for j in range(length)] for i in range(length)]
        a = [[v / sum(row) for v in row] for row in a]
        result = [
            [sum(a[i][k] * result[k][j] for k in range(length)) for j in range(length)] for i in range(length)
        ]
    return result


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.5])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_rollout_matches_loop_reference(fusion, ratio, prefix):
    rng = np.random.default_rng(3)
    maps = [random_attention(rng, heads=2, length=5) for _ in range(3)]
    ours = rollout(maps, head_fusion=fusion, discard_ratio=ratio, prefix_tokens=prefix)
    np.testing.assert_allclose(ours, reference_rollout(maps, fusion, ratio, prefix), atol=1e-12)
    np.testing.assert_allclose(ours.sum(axis=-1), 1.0, atol=1e-12)


def test_rollout_accepts_tensors_and_never_discards_prefix_columns():
    rng = np.random.default_rng(4)
    maps = [random_attention(rng, 2, 5) for _ in range(3)]
    maps[0][:, :, 0] = 1e-6  # the CLS column is the weakest of all, and still kept
    maps[0] /= maps[0].sum(axis=-1, keepdims=True)
    from_tensors = rollout([torch.from_numpy(m).float() for m in maps], "max", 0.9)
    np.testing.assert_allclose(from_tensors, rollout(maps, "max", 0.9), atol=1e-6)
    single = rollout(maps[:1], "mean", 0.9, prefix_tokens=1)
    assert (single[:, 0] > 0).all()  # only the identity and what survived remain; CLS column kept


def vit_explain_rollout(maps, discard_ratio: float, head_fusion: str) -> np.ndarray:
    """The widely copied jacobgil/vit-explain ``rollout`` (batch of one), its division kept as is."""
    result = torch.eye(maps[0].shape[-1], dtype=torch.float64)
    for layer in maps:
        attention = torch.from_numpy(layer)[None]  # (1, heads, L, L)
        fused = getattr(attention, head_fusion)(dim=1)
        fused = fused if head_fusion == "mean" else fused[0]
        flat = fused.view(fused.size(0), -1)
        _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
        indices = indices[indices != 0]  # protects only the CLS -> CLS entry
        flat[0, indices] = 0
        a = (fused + torch.eye(fused.size(-1), dtype=torch.float64)) / 2
        a = a / a.sum(dim=-1)  # (1, L, L) / (1, L): divides column j by row j's sum
        result = torch.matmul(a, result)
    return result[0].numpy()


def test_vit_explain_division_is_wrong_where_rows_do_not_sum_to_one():
    rng = np.random.default_rng(5)
    maps = [random_attention(rng, 2, 5) for _ in range(3)]
    # Mean fusion, nothing discarded: rows of (A + I) / 2 already sum to 1, the division is a no-op.
    np.testing.assert_allclose(vit_explain_rollout(maps, 0.0, "mean"), rollout(maps, "mean"), atol=1e-12)
    # Max fusion: fused rows sum to more than 1 and the column-wise division shows.
    theirs, ours = vit_explain_rollout(maps, 0.0, "max"), rollout(maps, "max")
    assert np.abs(theirs.sum(axis=-1) - 1).max() > 1e-2
    assert np.abs(theirs - ours).max() > 1e-2
    np.testing.assert_allclose(ours.sum(axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(ours, reference_rollout(maps, "max", 0.0, 1), atol=1e-12)


def test_rollout_rejects_bad_arguments():
    maps = [random_attention(np.random.default_rng(0), 2, 5)]
    with pytest.raises(ValueError, match=r"`head_fusion` must be one of \('mean', 'max', 'min'\), got 'sum'"):
        rollout(maps, head_fusion="sum")
    with pytest.raises(ValueError, match=r"`discard_ratio` must be a float in \[0, 1\), got 1.0"):
        rollout(maps, discard_ratio=1.0)
    with pytest.raises(ValueError, match="take one sample"):
        rollout([maps[0][None]])
    with pytest.raises(ValueError, match="at least one layer"):
        rollout([])


# -- geometry --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, cols", [(4, 4), (3, 5)])
@pytest.mark.parametrize("prefix", [1, 5])  # CLS; CLS + 4 registers
def test_one_patch_lights_exactly_its_pixels(rows, cols, prefix):
    patch = (8, 6)  # non-square patches, so a swapped axis cannot pass
    grid = PatchGrid((rows, cols), prefix_tokens=prefix, patch_size=patch)
    image_size = (rows * patch[0], cols * patch[1])
    for i, j in [(0, 0), (rows - 1, cols - 1), (1, cols - 2)]:
        weights = np.zeros((2, grid.length, grid.length))
        weights[:, :, prefix + i * cols + j] = 1.0  # every query, CLS included, attends to patch (i, j)
        expected = np.zeros(image_size, dtype=bool)
        expected[i * patch[0] : (i + 1) * patch[0], j * patch[1] : (j + 1) * patch[1]] = True
        heats = [
            cls_to_patches(weights, grid)[1],
            mean_received(weights, grid)[1],
            query_patch(weights, grid, rows - 1, 0)[1],
        ]
        for heat in heats:
            assert heat.shape == (rows, cols)
            np.testing.assert_array_equal(upsample(heat, image_size, patch) > 0, expected)
            np.testing.assert_array_equal(upsample(heat, image_size) > 0, expected)  # even split agrees


def test_upsample_leaves_pixels_no_patch_covers_untinted():
    heat = np.arange(6.0).reshape(2, 3)
    up = upsample(heat, (18, 25), (8, 8))  # the model dropped the last 2 rows and 1 column of pixels
    assert np.isnan(up[16:]).all() and np.isnan(up[:, 24:]).all()
    assert up[15, 23] == heat[1, 2] and up[8, 8] == heat[1, 1]
    image = np.full((18, 25, 3), 0.5)
    blended = blend(image, heat, (8, 8)).astype(int)
    assert (np.abs(blended[16:] - 128) <= 1).all() and (np.abs(blended[:, 24:] - 128) <= 1).all()  # as it was
    assert (np.abs(blended[:16, :24] - 128) > 1).any(axis=-1).all()  # every covered pixel is tinted


def test_cls_query_indexes_prefix_tokens():
    grid = PatchGrid((2, 2), prefix_tokens=2, patch_size=4)
    weights = np.zeros((1, 6, 6))
    weights[0, 1, 2 + 3] = 1.0  # the distillation token (query 1) looks at patch (1, 1)
    np.testing.assert_array_equal(cls_to_patches(weights, grid, query=1)[0], [[0, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"`query` must be a prefix token index in \[0, 2\), got 2"):
        cls_to_patches(weights, grid, query=2)
    with pytest.raises(ValueError, match="use mean_received or query_patch"):
        cls_to_patches(np.zeros((1, 4, 4)), PatchGrid((2, 2), 0, 4))


def test_wrong_sequence_length_says_what_was_expected():
    grid = PatchGrid((14, 14), prefix_tokens=1, patch_size=(16, 16))
    with pytest.raises(ValueError, match="expected 1 prefix \\+ 14×14 patches = 197 tokens, got 50"):
        grid.split(50)
    with pytest.raises(ValueError, match="= 197 tokens, got 50"):
        cls_to_patches(torch.rand(3, 50, 50), grid)
    with pytest.raises(ValueError, match="= 197 tokens, got 50"):
        mean_attention_distance(np.ones((3, 50, 50)), grid)
    assert grid.split(197) == (slice(0, 1), slice(1, 197))


def test_patch_grid_checks_its_fields():
    assert PatchGrid((np.int64(3), 5), 1, 16).patch_size == (16, 16)
    with pytest.raises(ValueError, match="`grid` must be a positive int or a pair"):
        PatchGrid((0, 4), 1, 16)
    with pytest.raises(ValueError, match="`prefix_tokens` must be an int >= 0, got -1"):
        PatchGrid((4, 4), -1, 16)
    with pytest.raises(ValueError, match="`patch_size` must be a positive int or a pair"):
        PatchGrid((4, 4), 1, (16, 16, 3))


# -- grids read off real models --------------------------------------------------------------------


def test_grid_from_timm_matches_captured_sequence():
    model = timm_vit(fused=True, reg_tokens=4)
    grid = grid_from_timm(model)
    assert grid == PatchGrid((4, 4), prefix_tokens=5, patch_size=(8, 8))
    with capture_attention(model, samples=1) as cap:
        model(torch.rand(1, 3, 32, 32))
    weights = next(iter(cap.maps.values()))[0]  # (heads, L, L)
    assert cls_to_patches(weights, grid).shape == (4, 4, 4)


def test_grid_from_timm_dynamic_image_size():
    model = timm_vit(fused=True, dynamic_img_size=True)
    grid = grid_from_timm(model, image_size=(48, 32))
    assert grid == PatchGrid((6, 4), prefix_tokens=1, patch_size=(8, 8))
    with capture_attention(model, samples=1) as cap:
        model(torch.rand(1, 3, 48, 32))
    weights = next(iter(cap.maps.values()))[0]
    assert mean_received(weights, grid).shape == (4, 6, 4)
    with pytest.raises(ValueError, match=r"expected 1 prefix \+ 4×4 patches = 17 tokens, got 25"):
        mean_received(weights, grid_from_timm(model))  # the grid it was built for is not the one fed
    with pytest.raises(ValueError, match="`model` must be a timm ViT"):
        grid_from_timm(torch.nn.Linear(2, 2))


def test_grid_from_hf_matches_captured_sequence():
    import transformers as tf

    model = hf_pair("vit")[0]
    grid = grid_from_hf(model.config)
    assert grid == PatchGrid((4, 4), prefix_tokens=1, patch_size=(8, 8))
    with capture_attention(model, samples=1) as cap:
        model(pixel_values=torch.rand(1, 3, 32, 32))
    weights = next(iter(cap.maps.values()))[0]
    assert cls_to_patches(weights, grid).shape == (4, 4, 4)
    assert grid_from_hf(tf.DeiTConfig(image_size=32, patch_size=8)).prefix_tokens == 2  # + distillation
    registers = tf.Dinov2WithRegistersConfig(patch_size=14, num_register_tokens=4)
    assert grid_from_hf(registers, image_size=224) == PatchGrid((16, 16), 5, 14)
    assert grid_from_hf(model.config, image_size=(48, 32), prefix_tokens=2).grid == (6, 4)


# -- mean attention distance -----------------------------------------------------------------------


def test_attention_to_own_patch_has_distance_zero():
    grid = PatchGrid((3, 4), prefix_tokens=1, patch_size=16)
    weights = np.zeros((2, 13, 13))
    weights[:, :, 0] = 0.4  # some weight on CLS: dropped, the rest renormalised
    weights[:, np.arange(1, 13), np.arange(1, 13)] = 0.6
    np.testing.assert_allclose(mean_attention_distance(weights, grid), [0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("prefix", [0, 1])
def test_uniform_attention_on_2x2_grid(prefix):
    # From any patch of a 2×2 grid of 16-pixel patches, the four patch centres lie at
    # 0, 16, 16 and 16√2 pixels, so uniform attention has mean distance (32 + 16√2) / 4 ≈ 13.657.
    grid = PatchGrid((2, 2), prefix_tokens=prefix, patch_size=16)
    length = 4 + prefix
    weights = np.full((3, length, length), 1 / length)  # CLS gets a share too; renormalised away
    expected = (32 + 16 * math.sqrt(2)) / 4
    np.testing.assert_allclose(mean_attention_distance(weights, grid), [expected] * 3, atol=1e-12)


def test_mean_attention_distance_matches_loop_reference():
    rng = np.random.default_rng(7)
    rows, cols, prefix, (ph, pw) = 3, 4, 2, (8, 6)
    grid = PatchGrid((rows, cols), prefix, (ph, pw))
    weights = random_attention(rng, heads=3, length=prefix + rows * cols)
    expected = []
    for head in weights:
        per_query = []
        for q in range(rows * cols):
            qy, qx = (q // cols + 0.5) * ph, (q % cols + 0.5) * pw
            row = head[prefix + q, prefix:]
            total = sum(
                w * math.hypot(qy - (k // cols + 0.5) * ph, qx - (k % cols + 0.5) * pw)
                for k, w in enumerate(row)
            )
            per_query.append(total / row.sum())
        expected.append(sum(per_query) / len(per_query))
    np.testing.assert_allclose(mean_attention_distance(torch.from_numpy(weights), grid), expected, atol=1e-10)


def test_query_rows_without_patch_weight_are_left_out():
    grid = PatchGrid((1, 2), prefix_tokens=1, patch_size=10)
    weights = np.array([[[1, 0, 0], [1, 0, 0], [0, 0.5, 0.5]]], dtype=float)  # patch 0 looks only at CLS
    np.testing.assert_allclose(mean_attention_distance(weights, grid), [5.0])


# -- unnormalize -----------------------------------------------------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_unnormalize_round_trips(channels_last, channels):
    rng = np.random.default_rng(8)
    image = rng.random((6, 5, channels))  # HWC in [0, 1]
    mean, std = np.array(MEAN[:channels]), np.array(STD[:channels])
    normalised = (image - mean) / std
    given = normalised if channels_last else torch.from_numpy(np.moveaxis(normalised, -1, 0))  # CHW tensor
    restored = unnormalize(given, mean=mean.tolist(), std=std.tolist())
    assert restored.shape == (6, 5, 3)
    np.testing.assert_allclose(restored, np.repeat(image, 3 // channels, axis=-1), atol=1e-6)


def test_unnormalize_without_statistics_scales_min_max():
    gray = np.array([[-2.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(unnormalize(gray)[..., 0], [[0.0, 0.5], [0.75, 1.0]])
    np.testing.assert_allclose(unnormalize(np.full((2, 2, 3), 255, dtype=np.uint8)), 0.0)  # constant: black
    assert unnormalize(np.full((3, 4, 4), 7, dtype=np.uint8), mean=0, std=1).max() == pytest.approx(7 / 255)
    with pytest.raises(ValueError, match="take one image"):
        unnormalize(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="`mean` must have 1 or 3 values"):
        unnormalize(torch.rand(3, 8, 8), mean=(0.5, 0.5), std=(0.5, 0.5))


# Overlay pictures (overlay, overlay_grid) are tested in test_render.py with the other pictures.
