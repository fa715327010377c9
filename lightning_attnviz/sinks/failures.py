"""Writes that failed, told once per cause instead of once per capture.

A full disk fails every write of every later capture the same way: the capture file, the TensorBoard
event file. Telling it at each capture buries the one fact the user needs (the disk is full, these
things are not being written, training goes on) under dozens of lines. So a full disk is told once,
with what was not written at the capture where it struck; any other failure of a write once per
writer and kind of error. Writers leave nothing partial behind (see ``capture_file`` and
``tensorboard``), so what is not written is simply missing.
"""

from __future__ import annotations

import errno

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the user's quota on it) is full."""
    return isinstance(err, OSError) and err.errno in _DISK_FULL


class WriteFailures:
    """Collects the failed writes of one capture (:meth:`add`) and words them (:meth:`messages`)."""

    def __init__(self) -> None:
        self._told: set[str] = set()
        self._pending: list[tuple[str, str, BaseException]] = []

    def add(self, writer: str, what: str, err: BaseException) -> None:
        """``what`` (e.g. the capture file's path) could not be written by ``writer`` (a stable name:
        it decides what counts as the same failure again)."""
        self._pending.append((writer, what, err))

    def messages(self, step: int) -> list[str]:
        """The warnings for the failures added since the last call; each cause at most once per fit."""
        pending, self._pending = self._pending, []
        full = [(what, err) for _, what, err in pending if disk_full(err)]
        out = []
        if full and "disk full" not in self._told:
            self._told.add("disk full")
            err = full[0][1]
            lost = " and ".join(what for what, _ in full)
            out.append(
                f"AttentionMonitor: the disk is full ({type(err).__name__}: {err}): at step {step}, "
                f"{lost} could not be written. Later captures are written as far as space allows, each "
                "file whole or not at all, so nothing partial is left behind; this is said once. "
                "Training goes on; free space on that disk to log again."
            )
        for writer, what, err in pending:
            key = f"{writer}:{type(err).__name__}:{getattr(err, 'errno', None)}"
            if not disk_full(err) and key not in self._told:
                self._told.add(key)
                out.append(
                    f"AttentionMonitor: saving {what} failed ({type(err).__name__}: {err}); later "
                    f"failures of {writer} like this one are not repeated. Training goes on."
                )
        return out
