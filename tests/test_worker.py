"""The drawing worker: forked, spawned or a thread, it draws the same; a drawing process that is
killed or stops answering is replaced and loses nothing it held; every wait at the end of a fit is
bounded and names what was not drawn; training never blocks on it."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
from lightning_models import LitGPT, make_trainer, read_events, token_loader
from pytorch_lightning.callbacks import Callback

from lightning_attnviz import AttentionMonitor
from lightning_attnviz.pipeline.worker import PING_SECONDS, STALL_SECONDS, shared_worker

HEATMAP = "attention/sample_0/model.h.0.attn/heatmap"
DRIFT = "attention_stats/drift/model.h.0.attn/mean"
EVOLUTION = "attention/sample_0/model.h.0.attn/evolution"
needs_signals = pytest.mark.skipif(
    not hasattr(signal, "SIGSTOP"), reason="stopping and killing a process by signal needs POSIX"
)

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
    print(shared_worker().mode, steps)
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
    assert result.stdout.strip().splitlines()[-1] == f"{how} [2, 5]"


def _fit(tmp_path, callbacks, epochs: int = 3, before=(), **kwargs):
    """A fit whose AttentionMonitor warnings are returned; an alarm ends it if it hangs."""
    monitor = AttentionMonitor(plots=["heatmap", "evolution"])
    trainer = make_trainer(tmp_path, [*before, monitor, *callbacks], max_epochs=epochs, **kwargs)
    shared_worker()  # started before the fit, so that it can be stopped or killed during it
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(150)  # the old behaviour held a stopped process's fit for 4 minutes
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return trainer, [str(w.message) for w in record if "AttentionMonitor" in str(w.message)]


def _hung(signum, frame):
    raise TimeoutError("the fit did not end: a wait without a bound")


def _steps(trainer, tag: str = HEATMAP, kind: str = "Images") -> list[int]:
    events = read_events(trainer.logger.log_dir)
    known = events.Tags()["images" if kind == "Images" else "scalars"]
    return [e.step for e in getattr(events, kind)(tag)] if tag in known else []


class Signal(Callback):
    """Sends ``sig`` to the drawing process right after the monitor handed over the capture of each
    validation in ``epochs``: that capture is being drawn when the signal arrives."""

    def __init__(self, sig: int, epochs: tuple[int, ...]) -> None:
        self.sig, self.epochs, self.pids, self.sent = sig, epochs, [], None

    def on_validation_epoch_end(self, trainer, pl_module):
        link = shared_worker().link
        if trainer.current_epoch in self.epochs and link.pid is not None:
            self.pids.append(link.pid)
            os.kill(link.pid, self.sig)
            self.sent = time.monotonic()


class Idle(Callback):
    """Before the monitor's capture: waits until every earlier capture is drawn and answered, so a
    signal that follows never lands while an answer is half sent (that capture would count as not
    drawn, or be drawn twice, although its pictures were written)."""

    def __init__(self, epochs: tuple[int, ...]) -> None:
        self.epochs = epochs

    def on_validation_epoch_end(self, trainer, pl_module):
        deadline = time.monotonic() + 60
        channels = shared_worker()._channels.values()
        while trainer.current_epoch in self.epochs and any(ch.jobs for ch in channels):
            assert time.monotonic() < deadline, "the drawing process did not catch up"
            shared_worker().check()  # as each training step does: a process that died is replaced
            time.sleep(0.05)


class SlowSteps(Callback):
    """Training that goes on past the time the drawing process may stay silent after ``signal``
    (however fast this machine trains): each step waits until its share of that time has passed."""

    def __init__(self, signal: Signal, steps: int) -> None:
        self.signal, self.steps, self.done = signal, steps, 0

    def on_train_batch_end(self, *args):
        if self.signal.sent is None:
            return
        self.done += 1
        share = (STALL_SECONDS + 3 * PING_SECONDS) * self.done / self.steps
        time.sleep(max(0.0, self.signal.sent + share - time.monotonic()))


@needs_signals
def test_a_killed_drawing_process_is_replaced_and_loses_nothing_it_held(tmp_path):
    killer = Signal(signal.SIGKILL, epochs=(0, 1))
    trainer, messages = _fit(tmp_path, [killer], epochs=3, before=[Idle(epochs=(1,))])
    assert trainer.state.finished
    # each capture being drawn at a kill is drawn again by a new drawing process, never by a thread
    assert _steps(trainer) == [2, 5, 8]
    assert shared_worker().mode == "fork" and shared_worker().link.pid not in killer.pids
    ended = [m for m in messages if "the drawing process ended (exit code -9)" in m]
    assert len(ended) == 2 and all("a new drawing process took over and draws them again" in m for m in ended)
    held = [[int(s) for s in m.partition("step(s) ")[2].partition(")")[0].split(", ")] for m in ended]
    # the capture being drawn at each kill is named; one handed over before the death was noticed
    # (the next validation's, on a machine that trains faster than the death is seen) is too
    assert held[0] == [2] and held[1] in ([5], [5, 8])
    # the history went on: drift from the second capture, strips one column wider each capture
    assert _steps(trainer, DRIFT, "Scalars") == [5, 8]
    widths = [e.width for e in read_events(trainer.logger.log_dir).Images(EVOLUTION)]
    assert widths[0] < widths[1] < widths[2]


@needs_signals
def test_a_stopped_drawing_process_is_replaced_during_training(tmp_path):
    stopper = Signal(signal.SIGSTOP, epochs=(0,))
    # the steps after the stop last longer than the drawing process may stay silent
    trainer, messages = _fit(tmp_path, [stopper, SlowSteps(stopper, steps=9)], epochs=5)
    assert trainer.state.finished
    assert _steps(trainer) == [2, 5, 8, 11, 14]  # nothing lost: what it held is drawn again
    ended = [m for m in messages if "the drawing process ended (it stopped answering for 10 s" in m]
    assert len(ended) == 1 and "SIGSTOP" in ended[0]
    with pytest.raises(ProcessLookupError):
        os.kill(stopper.pids[0], 0)  # ended, not left stopped


@needs_signals
def test_a_stopped_drawing_process_ends_the_fit_with_one_warning_naming_what_was_not_drawn(tmp_path):
    stopper = Signal(signal.SIGSTOP, epochs=(0,))
    trainer, messages = _fit(tmp_path, [stopper], epochs=3)
    assert trainer.state.finished
    (lost,) = [m for m in messages if "were not drawn" in m]
    assert "the drawing process stopped answering for 10 s" in lost and "SIGSTOP" in lost
    named = [int(s) for s in lost.partition("step(s) ")[2].partition(")")[0].split(", ")]
    assert sorted(set(named) | set(_steps(trainer))) == [2, 5, 8]  # each capture drawn or named
    assert not set(named) & set(_steps(trainer))
    assert not [m for m in messages if "waiting for" in m]  # a silent process is not "drawing"
    with pytest.raises(ProcessLookupError):
        os.kill(stopper.pids[0], 0)


class CtrlC(Callback):
    """Presses Ctrl-C at the start of the third epoch, after two captures were handed over."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise KeyboardInterrupt


def test_ctrl_c_still_writes_every_capture_taken(tmp_path):
    with pytest.raises(SystemExit):  # Lightning's graceful shutdown ends with exit(1)
        _fit(tmp_path, [CtrlC()], epochs=5)
    events = read_events(tmp_path / "tb" / "version_0")
    assert [e.step for e in events.Images(HEATMAP)] == [2, 5]


@needs_signals
def test_ctrl_c_with_captures_waiting_names_exactly_those_not_drawn(tmp_path):
    stopper = Signal(signal.SIGSTOP, epochs=(1,))  # the capture of epoch 0 is drawn, not those after
    monitor = AttentionMonitor(plots=["heatmap"])
    trainer = make_trainer(tmp_path, [Idle(epochs=(1,)), monitor, stopper, CtrlC()], max_epochs=5)
    with warnings.catch_warnings(record=True) as record, pytest.raises(SystemExit):
        warnings.simplefilter("always")
        trainer.fit(LitGPT(), token_loader(), token_loader(seed=1))
    (lost,) = [str(w.message) for w in record if "were not drawn" in str(w.message)]
    drawn = _steps(trainer)
    assert drawn == [2] and lost.startswith("AttentionMonitor: 1 capture(s) were not drawn (step(s) 5)")


def _tmpfs(path) -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to mount a 2 MiB tmpfs as a full log disk (CI runs as root)")
    path.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)]
    mounted = subprocess.run(command, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs failed here: {mounted.stderr.decode().strip()}")


def test_a_full_log_disk_ends_the_fit_at_once(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk)
    try:
        with open(disk / "filler", "wb") as f:  # leave ~150 KB: the first captures fit, the rest not
            f.write(b"\0" * (2048 - 150) * 1024)
        trainer, messages = _fit(disk, [], epochs=4)
        assert trainer.state.finished
        # every capture was answered (drawn, or failed to write) and the failed close too: nothing
        # was waited for in vain, nothing is named as not drawn
        assert not [m for m in messages if "were not drawn" in m or "did not close" in m]
        assert any("No space left on device" in m for m in messages)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
def test_a_capture_draws_in_what_training_leaves_idle_then_catches_up_then_hurries():
    """Each step runs on the lane due when it starts: nice 19 while nothing else waits, ``DRAWING_NICE``
    above training once another capture waits behind it (or it has waited too long), training's own
    priority once training waits for it; moving up needs no privilege (a lane started higher)."""
    import threading

    from lightning_attnviz.pipeline.child import Serve
    from lightning_attnviz.pipeline.lanes import CATCH_UP_SECONDS, DRAWING_NICE, IDLE_NICE
    from lightning_attnviz.pipeline.messages import Draw, Hurry

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = nice()
    serve = Serve(lambda message: None, lower=True)
    serve.accept(Draw(0, 1, None, False))  # the capture being drawn (nothing reads its job here)
    seen: dict[str, int] = {}

    def capture() -> None:
        seen["start"] = nice()
        seen["alone"] = serve._gate(nice)
        serve.accept(Draw(0, 2, None, False))  # the next capture arrives
        seen["behind"] = serve._gate(nice)
        serve.accept(Hurry(True))  # training ended and waits
        seen["waited"] = serve._gate(nice)
        serve.accept(Hurry(False))
        with serve.lock:
            del serve.pending[2]
            serve.arrived[1] -= CATCH_UP_SECONDS + 1  # alone again, but waiting too long
        seen["late"] = serve._gate(nice)

    serve._at_priority(capture)
    catch_up = min(19, base + DRAWING_NICE)
    idle = max(catch_up, IDLE_NICE)
    assert seen == {"start": idle, "alone": idle, "behind": catch_up, "waited": base, "late": catch_up}
    assert nice() == base  # the test's own thread is as it was
