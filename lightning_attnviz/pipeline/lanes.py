"""The drawing process's three threads ("lanes"), one per nice value, and the rule that picks one.

Each step of a capture (a picture kind, its encoding, the tab's maps, the capture file, the event
file) runs on the lane due when it starts: ``idle`` (nice 19) while training runs and nothing waits
behind the capture, so the drawing takes what training leaves idle without pre-empting its threads;
``catch_up`` (:data:`DRAWING_NICE` above training) once another capture waits or it has waited
:data:`CATCH_UP_SECONDS`, so it keeps up on a busy machine; ``full`` (training's own priority) once
training ends and waits. A thread can lower its own nice value but not raise it back without
privileges, so moving up hands the next step to a lane started higher. docs/drawing.md has the
measurements.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any


def _nice(value: str) -> int:
    return int(value) if value.isdigit() and int(value) <= 19 else 5


# How far below training the drawing runs while it catches up (``ATTNVIZ_NICE=0..19`` chooses).
# Under Linux's scheduler a thread's share of a contended core follows its weight: nice 0 → 1024,
# 5 → 335, 10 → 110, 19 → 15. At 19 alone the drawing starves on a machine kept busy by other work
# (9 of 20 step captures skipped in one loaded run); at 5 it gets ~a quarter of a core shared with one
# busy process. docs/drawing.md has the measurements.
DRAWING_NICE = _nice(os.environ.get("ATTNVIZ_NICE", "5"))
IDLE_NICE = 19  # while nothing waits: what training leaves idle, without pre-empting its threads
CATCH_UP_SECONDS = 10.0  # a capture waiting longer than this is drawn at DRAWING_NICE
PER_THREAD = sys.platform.startswith("linux")  # elsewhere a nice value is the whole process's


class Lane:
    """A thread that runs what it is handed at one nice value, set once when it starts (lowering a
    thread's nice value needs no privilege; raising it back does)."""

    def __init__(self, nice: int) -> None:
        self.nice = nice
        self._jobs: queue.Queue[tuple[Callable[[], Any], threading.Event, dict[str, Any]]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"attnviz-draw-nice{nice}", daemon=True)
        self._thread.start()

    def here(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, fn: Callable[[], Any]) -> Any:
        done, box = threading.Event(), dict[str, Any]()
        self._jobs.put((fn, done, box))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _loop(self) -> None:
        set_nice(threading.get_native_id(), self.nice)
        while True:
            fn, done, box = self._jobs.get()
            try:
                box["value"] = fn()
            except BaseException as err:
                box["error"] = err
            finally:
                done.set()


def set_nice(tid: int, value: int) -> None:
    """One thread's nice value (Linux keeps one per thread). Raising a thread's priority back needs
    CAP_SYS_NICE or RLIMIT_NICE (root in most containers); without, it stays where it is."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, min(19, value)))


class Lanes:
    """The three lanes, started on first use by the thread that draws (at training's priority: each
    lane lowers itself), and the hand-over of one step to the lane due."""

    def __init__(self) -> None:
        self._lanes: dict[str, Lane] = {}
        self._hop = threading.local()  # set on a lane while it runs a step handed to it

    def start(self, fn: Callable[[], Any], due: str) -> Any:
        """``fn()`` (a whole capture) on lane ``due``; call from the thread that draws."""
        if not self._lanes:
            base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            catch_up = min(19, base + DRAWING_NICE)
            levels = {"idle": max(catch_up, IDLE_NICE), "catch_up": catch_up, "full": base}
            self._lanes = {name: Lane(nice) for name, nice in levels.items()}
        return self._lanes[due].run(fn)

    def gate(self, step: Callable[[], Any], due: str) -> Any:
        """Run one step on lane ``due`` (here when it is this thread's, when no lanes run, or when
        this thread already runs a handed step: a lane never waits for itself)."""
        lane = self._lanes.get(due)
        if lane is None or lane.here() or getattr(self._hop, "on", False):
            return step()

        def handed() -> Any:
            self._hop.on = True
            try:
                return step()
            finally:
                self._hop.on = False

        return lane.run(handed)
