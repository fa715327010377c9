"""LightningModules and data for the callback tests."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from models import GPT, GPTConfig
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

VOCAB = [f"w{i}" for i in range(32)]


def token_loader(n: int = 32, length: int = 10, batch_size: int = 8, pad: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 32, (n, length), generator=g)
    if pad:  # trailing padding (id 0) of varying length, as a tokenizer makes it
        lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
        x[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    return DataLoader(TensorDataset(x, x.roll(-1, dims=1)), batch_size=batch_size)


def lit_gpt_for(package: object) -> pl.LightningModule:
    """A plain nanoGPT LightningModule of ``package`` (``pytorch_lightning`` or ``lightning.pytorch``),
    to check that both Lightning packages are served."""

    class PackageGPT(package.LightningModule):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = GPT(GPTConfig())

        def forward(self, idx):
            return self.model(idx)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x).flatten(0, 1), y.flatten()))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    return PackageGPT()


class LitGPT(pl.LightningModule):
    """nanoGPT-style language model (fused SDPA), dropout on so RNG streams matter."""

    def __init__(self, flash: bool = True) -> None:
        super().__init__()
        self.model = GPT(GPTConfig(flash=flash))
        self.drop = nn.Dropout(0.1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.drop(self(x))
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        self.log(f"{stage}_loss", loss)
        return loss

    def training_step(self, batch, batch_idx):
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


class LitEncoder(LitGPT):
    """PyTorch's own nn.TransformerEncoder with a padding mask: nested-tensor fast path in validation."""

    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.embed = nn.Embedding(32, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)
        self.head = nn.Linear(32, 32)
        self.drop = nn.Dropout(0.1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(idx), src_key_padding_mask=idx == 0))


class PreviousTokenAttention(nn.Module):
    """Attention forced onto the previous token (the first token onto itself) by its mask."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (t.view(B, L, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(D, dim=2))
        allowed = torch.zeros(L, L, dtype=torch.bool)
        allowed[torch.arange(1, L), torch.arange(L - 1)] = True
        allowed[0, 0] = True
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return y.transpose(1, 2).reshape(B, L, D)


class LitPrevious(LitGPT):
    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.embed = nn.Embedding(32, 16)
        self.attn = PreviousTokenAttention()
        self.head = nn.Linear(16, 32)
        self.drop = nn.Identity()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(idx)))


class LitNoAttention(LitGPT):
    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.net = nn.Sequential(nn.Embedding(32, 16), nn.Linear(16, 32))
        self.drop = nn.Identity()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.net(idx)



class LitImageClassifier(pl.LightningModule):
    """Cross-entropy on (images, labels) batches, SGD or AdamW at ``lr``; subclasses give ``forward``."""

    def __init__(self, lr: float, adam: bool) -> None:
        super().__init__()
        self.lr, self.adam = lr, adam

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW if self.adam else torch.optim.SGD
        return optimizer(self.parameters(), lr=self.lr)


class LitTimmViT(LitImageClassifier):
    """A tiny timm ViT with random weights and 8-px patches classifying 3 classes; ``vit`` options
    (``img_size``, ``reg_tokens``, ``global_pool``, ...) go to ``timm.create_model``."""

    def __init__(self, lr: float = 0.5, adam: bool = False, **vit) -> None:
        super().__init__(lr, adam)
        import timm  # with tests/torchvision_standin installed first (conftest does)

        options = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=3)
        self.vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**options, **vit})

    def forward(self, images):
        return self.vit(images)


def make_trainer(tmp_path, callbacks=(), logger=True, **kwargs) -> pl.Trainer:
    options = dict(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    options.update(kwargs)
    if logger is True:
        logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    return pl.Trainer(logger=logger, callbacks=list(callbacks), **options)


def read_events(log_dir) -> EventAccumulator:
    """All events, with nothing sampled away (TensorBoard keeps 10 images per tag by default)."""
    events = EventAccumulator(
        str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0, "histograms": 0}
    )
    events.Reload()
    return events


class DictTokens(torch.utils.data.Dataset):
    """Hugging Face-style samples: dicts of input_ids, attention_mask (trailing padding) and labels."""

    def __init__(self, n: int = 16, length: int = 9, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, length), generator=g)
        lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
        self.mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


class LitBert(pl.LightningModule):
    """A Hugging Face BERT (small random config, SDPA attention) fed dict batches."""

    def __init__(self) -> None:
        super().__init__()
        from models import hf_pair

        self.bert = hf_pair("bert")[0]
        self.classifier = nn.Linear(32, 2)

    def forward(self, input_ids, attention_mask=None, labels=None):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.classifier(hidden[:, 0])

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(**batch), batch["labels"])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(**batch), batch["labels"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def image_loader(n: int = 12, size: tuple[int, int] = (32, 32), batch_size: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, *size, generator=g)
    return DataLoader(TensorDataset(images, torch.randint(0, 3, (n,), generator=g)), batch_size=batch_size)


class LitViT(pl.LightningModule):
    """Wraps a timm or Hugging Face ViT (built from a small config) as an image classifier."""

    def __init__(self, kind: str = "timm") -> None:
        super().__init__()
        from models import hf_pair, timm_vit

        self.kind = kind
        if kind == "timm":
            self.vit = timm_vit(fused=True, reg_tokens=4)
        else:
            self.vit = hf_pair("vit")[0]
            self.classifier = nn.Linear(32, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "timm":
            return self.vit(images)
        return self.classifier(self.vit(pixel_values=images).last_hidden_state[:, 0])

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)
