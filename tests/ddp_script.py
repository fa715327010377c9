"""Fit LitGPT with AttentionMonitor under Lightning's own ``ddp`` strategy: 2 CPU processes, gloo.

Run by ``tests/test_distributed.py`` as ``python ddp_script.py <out_dir>``. The ``ddp`` strategy starts
rank 1 by running this same command line again (with ``LOCAL_RANK=1`` in its environment), so the
whole fit lives under ``__main__`` and the test helpers are imported by path.

Each rank writes ``<out_dir>/rank_<global rank>.json``: its final global step and epoch, a SHA-256 of
its weights, whether it held the callback's TensorBoard writer and the step it last captured at.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS), str(TESTS.parent)]  # the tests' helpers, and the package from this checkout

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from lightning_models import VOCAB, LitGPT, make_trainer, token_loader  # noqa: E402

from lightning_attnviz import AttentionMonitor  # noqa: E402


def weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = LitGPT()
    monitor = AttentionMonitor(tokens=VOCAB, heads=[1])
    trainer = make_trainer(
        out,
        [monitor],
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    trainer.fit(model, token_loader(), token_loader(seed=1))
    result = {
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "weights": weights_digest(model),
        "finished": trainer.state.finished,
        "had_writer": monitor._setup is not None,  # the drawing pipeline was set up (rank 0)
        "last_capture_step": monitor._last_step,
    }
    (out / f"rank_{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
