"""What the micro benchmarks share: the best of a few CPU-time measurements of one call."""

from __future__ import annotations

import time
from collections.abc import Callable


def cpu_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """The least CPU time of ``repeats`` calls of ``fn`` (the least is the one least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best
