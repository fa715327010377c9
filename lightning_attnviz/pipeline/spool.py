"""Captures in flight at a checkpoint, kept beside the logs rather than inside the checkpoint.

A checkpoint holds what a resume needs and stays small: the fixed samples, counters, the pipeline's
bounded history after the last capture drawn, and, for each capture still being drawn, its step and
the path of its spool file. The q/k of those captures (tens of MB to GBs for a large model) go to
``<log dir>/.attnviz_inflight/step_<step>_<id>.job.pt``, written by the drawing process (on a thread
of its own) while the capture waits or is drawn. Once it is drawn, the state after it goes to
``….drawn.pt`` (a few MB at most) and the job file is removed.

On resume, each listed capture is either drawn (its ``.drawn.pt`` holds the history that includes it:
the fit goes on from there), waiting (its ``.job.pt`` is drawn now, under its own step), or gone
(said once). Only the newest :data:`KEEP_DRAWN` drawn states are kept per folder: a resume from an
older checkpoint goes on from the checkpoint's own history, and says which captures its strips skip.
Files are written whole (a temporary name, then a rename) and read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_attnviz.pipeline.messages import Job, job_from_state, job_state

FOLDER = ".attnviz_inflight"  # hidden: neither TensorBoard nor the CLI's step_*.npz globs read it
KEEP_DRAWN = 4  # drawn states kept per folder (the newest), for resumes from recent checkpoints
_JOB, _DRAWN = ".job.pt", ".drawn.pt"


def folder(root: str) -> str:
    return os.path.join(root, FOLDER)


def new_path(directory: str, step: int) -> str:
    """A fresh job file name: unique across fits and resumes that share a log folder."""
    return os.path.join(directory, f"step_{step:08d}_{uuid.uuid4().hex[:12]}{_JOB}")


def drawn_path(path: str) -> str:
    return path[: -len(_JOB)] + _DRAWN if path.endswith(_JOB) else path + _DRAWN


def _save(obj: Any, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    partial = f"{path}.partial"
    try:
        torch.save(obj, partial)
        os.replace(partial, path)  # a reader never sees half a file
    finally:
        with contextlib.suppress(OSError):
            os.remove(partial)


def write_job(path: str, job: Job) -> None:
    """Keep ``job`` at ``path`` until it is drawn (the drawing process, on its receiving thread)."""
    _save(job_state(job), path)


def mark_drawn(path: str, state: dict[str, Any] | None, overwrite: bool = True) -> None:
    """The capture kept at ``path`` is drawn: keep the state after it, drop the job, prune old states.
    Both processes mark it (whichever hears first; ``overwrite=False``: unless marked already)."""
    if state is not None and (overwrite or not os.path.isfile(drawn_path(path))):
        _save(state, drawn_path(path))
    with contextlib.suppress(OSError):
        os.remove(path)
    directory = Path(path).parent
    with contextlib.suppress(OSError):
        drawn = sorted(directory.glob(f"*{_DRAWN}"), key=lambda p: p.stat().st_mtime)
        for old in drawn[:-KEEP_DRAWN]:
            old.unlink(missing_ok=True)


def remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


@dataclass
class Resumed:
    """What a checkpoint's captures in flight became: the state to go on from, the captures to draw
    now (with their files), and what could not be had, in words."""

    state: dict[str, Any] | None
    jobs: list[tuple[Job, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def resolve(state: dict[str, Any] | None, inflight: list[dict[str, Any]]) -> Resumed:
    """Sort a checkpoint's captures in flight (oldest first) into drawn, waiting and gone.

    Args:
        state: the pipeline's state the checkpoint holds (after the last capture drawn before it).
        inflight: ``{"step", "path"}`` per capture that was still being drawn when it was saved.
    """
    out = Resumed(state)
    drawn = [i for i, e in enumerate(inflight) if os.path.isfile(drawn_path(e["path"]))]
    start = drawn[-1] + 1 if drawn else 0
    if drawn:
        try:
            out.state = torch.load(drawn_path(inflight[drawn[-1]]["path"]), weights_only=True)
        except Exception as err:  # a damaged file: go on from the checkpoint's own history
            out.problems.append(f"{drawn_path(inflight[drawn[-1]]['path'])} cannot be read ({err})")
    gone = []
    for entry in inflight[start:]:
        try:
            job = job_from_state(torch.load(entry["path"], weights_only=True))
        except FileNotFoundError:
            gone.append(entry)
            continue
        except Exception as err:
            out.problems.append(f"step {entry['step']}: {entry['path']} cannot be read ({err})")
            continue
        out.jobs.append((job, entry["path"]))
    if gone:
        steps = ", ".join(str(e["step"]) for e in gone)
        out.problems.append(
            f"step(s) {steps}: nothing of them is left in {os.path.dirname(gone[0]['path'])} (the state "
            f"after a drawn capture is kept for the newest {KEEP_DRAWN} only, and a process that ended "
            "early may not have written them); the evolution strips skip them"
        )
    return out
