"""AttentionMonitor under Lightning's own DDP strategy: two real CPU processes talking over gloo."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lightning_models import read_events

from lightning_attnviz.analysis.views import ROLES
from lightning_attnviz.sinks.tags import Tags

CAPTURE_DIR, MODULES_TAG = Tags().captures_dir, Tags().modules

SCRIPT = Path(__file__).with_name("ddp_script.py")
TIMEOUT_S = 120  # a deadlocked collective would otherwise hang the test run for good


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_ddp(out: Path) -> subprocess.CompletedProcess:
    """``python ddp_script.py out`` in a session of its own, so that a hang kills rank 1 as well."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "PL_DISABLE_FORK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK", "RANK"):
        env.pop(name, None)  # from an outer launcher: would make this fit think it is a child
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script's process group: rank 0 and the rank it launched
        stdout, _ = proc.communicate()
        raise AssertionError(
            f"DDP fit did not finish in {TIMEOUT_S} s (deadlock?):\n{stdout[-4000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout)


def test_ddp_logs_once_from_rank_zero_and_ranks_stay_in_step(tmp_path, record_property):
    start = time.perf_counter()
    run = _run_ddp(tmp_path)
    record_property("ddp_fit_s", round(time.perf_counter() - start, 1))
    assert run.returncode == 0, run.stdout[-4000:]

    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]
    assert sorted(p.name for p in tmp_path.glob("rank_*.json")) == ["rank_0.json", "rank_1.json"]
    for rank in ranks:
        assert rank["world_size"] == 2 and rank["finished"], rank
        assert rank["global_step"] == 4 and rank["epoch"] == 2, rank  # 2 epochs × 2 steps
    assert ranks[0]["weights"] == ranks[1]["weights"]  # same steps, same all-reduced gradients
    assert [r["had_writer"] for r in ranks] == [True, False]  # only global rank 0 writes
    assert [r["last_capture_step"] for r in ranks] == [3, None]  # and only it runs the capture forward

    log_dir = tmp_path / "tb" / "version_0"
    event_files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("events.out.tfevents.*"))
    # the logger's file and the monitor's own (written by rank 0's drawing process), nothing from rank 1
    assert len(event_files) == 2 and {f.parent for f in event_files} == {log_dir.relative_to(tmp_path)}, (
        event_files
    )
    assert [f.name.endswith(".attnviz") for f in event_files].count(True) == 1, event_files

    events = read_events(log_dir)
    layers = ["model.h.0.attn", "model.h.1.attn"]
    expected = {f"attention/sample_{s}/atlas" for s in range(2)} | {
        f"attention/sample_{s}/{layer}/{kind}"
        for s in range(2)
        for layer in layers
        for kind in ("heatmap", "head_1", "heads", "evolution")  # the default plots
    }
    metrics = ("entropy_norm", "distance", "sink", "max_weight", "drift", "max_logit", *ROLES)
    expected |= {f"attention/stats/{m}" for m in metrics}
    assert set(events.Tags()["images"]) == expected
    for tag in expected:
        steps = [3] if tag.endswith("stats/drift") else [1, 3]  # drift: from the second capture on
        assert [e.step for e in events.Images(tag)] == steps, tag  # one image per capture, no duplicate
    assert len(events.Tensors(MODULES_TAG + "/text_summary")) == 1
    saved = sorted(p.name for p in (log_dir / CAPTURE_DIR).iterdir())
    assert saved == ["step_00000001.npz", "step_00000003.npz"]
