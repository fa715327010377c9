"""Small models for the tests: a nanoGPT-style GPT and builders for timm / Hugging Face models.

Third-party models are built from small configs with random weights: nothing is downloaded.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int = 32
    block_size: int = 16
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 32
    flash: bool = True  # nanoGPT's switch: fused SDPA, or the explicit softmax it falls back to


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head
        self.flash = config.flash
        mask = torch.tril(torch.ones(config.block_size, config.block_size))
        self.register_buffer("bias", mask.view(1, 1, config.block_size, config.block_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, T, hs)
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = att @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GPTConfig()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt_reference_weights(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's causal attention, recomputed in float64 from c_attn and the block's input."""
    inputs = []
    handles = [b.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for b in model.h]
    try:
        with torch.no_grad():
            model(idx)
    finally:
        for h in handles:
            h.remove()
    out = []
    for block, x in zip(model.h, inputs, strict=True):
        B, T, C = x.shape
        q, k, _ = F.linear(
            x.double(), block.attn.c_attn.weight.double(), block.attn.c_attn.bias.double()
        ).split(C, dim=2)
        q, k = (t.view(B, T, model.config.n_head, -1).transpose(1, 2) for t in (q, k))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
        out.append(scores.softmax(-1).float())
    return out


def timm_vit(fused: bool, **kwargs) -> nn.Module:
    import timm

    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=4,
        num_classes=3,
        **kwargs,
    )
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model.eval()


def timm_reference_weights(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """timm's own eager softmax output (the input of ``attn_drop``), on a copy with fusion off."""
    eager = copy.deepcopy(model)
    seen: list[torch.Tensor] = []
    for block in eager.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, a, o: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        eager(images)
    return seen


def hf_pair(kind: str, **overrides):
    """The same randomly initialised Hugging Face model with SDPA and with eager attention."""
    import transformers as tf

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    configs = {
        "bert": (tf.BertConfig, tf.BertModel, dict(vocab_size=50, max_position_embeddings=32)),
        "gpt2": (
            tf.GPT2Config,
            tf.GPT2Model,
            dict(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4),
        ),
        "llama": (
            tf.LlamaConfig,
            tf.LlamaModel,
            dict(vocab_size=50, max_position_embeddings=32, num_key_value_heads=2),
        ),
        "vit": (tf.ViTConfig, tf.ViTModel, dict(image_size=32, patch_size=8, num_channels=3)),
        "t5": (
            tf.T5Config,
            tf.T5Model,
            dict(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4),
        ),
    }
    config_cls, model_cls, extra = configs[kind]
    options = {**small, **extra, **overrides} if kind not in ("gpt2", "t5") else {**extra, **overrides}
    models = []
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        models.append(model_cls(config_cls(**options, attn_implementation=impl)).eval())
    return models
