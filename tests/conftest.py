import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import torchvision_standin

torchvision_standin.install()

TOL = 1e-5  # max abs error of captured float32 weights against an independent reference


def reference_sdpa_weights(q, k, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q kᵀ·scale + mask) in float64, straight from SDPA's documented math."""
    q, k = q.double(), k.double()
    if enable_gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    length, width = scores.shape[-2:]
    if is_causal:
        scores = scores.masked_fill(~torch.ones(length, width, dtype=torch.bool).tril(), -math.inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        else:
            scores = scores + attn_mask.double()
    return scores.softmax(-1).float()


def assert_close(actual, expected, tol=TOL):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= tol, f"max abs error {err:.3g} > {tol}"


def assert_no_taps(model: torch.nn.Module) -> None:
    """Nothing of the capture is left on the model or the function-mode stack."""
    for name, module in model.named_modules():
        assert "forward" not in module.__dict__, name
        hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
        assert not [h for h in hooks if "lightning_attnviz" in getattr(h, "__module__", "")], name
    assert torch._C._len_torch_function_stack() == 0


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
