"""The drawing worker: forked, spawned or a thread, it draws the same; a dead one is noticed, never
waited on; training never blocks on it."""

import os
import subprocess
import sys
import textwrap

import pytest
from lightning_models import LitGPT, make_trainer, read_events, token_loader
from pytorch_lightning.callbacks import Callback

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.pipeline.worker import shared_worker

_FIT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import torchvision_standin; torchvision_standin.install()
    from lightning_models import LitGPT, make_trainer, read_events, token_loader
    from lightning_attnviz import AttentionMonitor
    from lightning_attnviz.pipeline.worker import shared_worker
    trainer = make_trainer({out!r}, [AttentionMonitor(plots=["heatmap"])], max_epochs=2)
    trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    events = read_events(trainer.logger.log_dir)
    steps = [e.step for e in events.Images("attention/sample_0/model.h.0.attn/heatmap")]
    print(shared_worker().mode, type(shared_worker()._process).__name__, steps)
    """
)


@pytest.mark.parametrize("how", ["fork", "spawn", "thread"])
def test_every_way_of_drawing_draws_the_same(tmp_path, how):
    env = {**os.environ, "ATTNVIZ_WORKER": {"fork": "process"}.get(how, how)}
    script = _FIT.format(tests=os.path.dirname(__file__), out=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {"fork": "process _Forked", "spawn": "process Popen", "thread": "thread NoneType"}[how]
    assert result.stdout.strip().splitlines()[-1] == f"{expected} [3, 6]"


class KillTheDrawingProcess(Callback):
    """Kills the drawing process at the end of the first validation, before the monitor captures."""

    def on_validation_epoch_end(self, trainer, pl_module):
        worker = shared_worker()
        if trainer.current_epoch == 0 and worker.mode == "process":
            worker._process.kill()
            worker._process.wait(timeout=30)


def test_a_dead_drawing_process_is_noticed_and_drawing_goes_on(tmp_path):
    shared_worker()  # started before the fit, so that it can die during it
    trainer = make_trainer(
        tmp_path, [KillTheDrawingProcess(), AttentionMonitor(plots=["heatmap"])], max_epochs=3
    )
    with pytest.warns(
        RuntimeWarning, match=r"the drawing process ended .*drawing continues on a background thread"
    ):
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.state.finished
    events = read_events(trainer.logger.log_dir)
    # nothing was in flight when it died: every capture is drawn, by the replacement
    assert [e.step for e in events.Images("attention/sample_0/model.h.0.attn/heatmap")] == [3, 6, 9]


class CtrlC(Callback):
    """Presses Ctrl-C at the start of the third epoch, after two captures were handed over."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise KeyboardInterrupt


def test_ctrl_c_still_writes_every_capture_taken(tmp_path):
    trainer = make_trainer(tmp_path, [AttentionMonitor(plots=["heatmap"]), CtrlC()], max_epochs=5)
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown ends with exit(1)
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    assert trainer.interrupted
    events = read_events(trainer.logger.log_dir)
    assert [e.step for e in events.Images("attention/sample_0/model.h.0.attn/heatmap")] == [3, 6]
