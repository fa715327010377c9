"""Small argument checks shared by every stage.

Errors name the argument, what is allowed and what was given. A wrong type is a ``TypeError``, a
value of the right type out of range a ``ValueError``. numpy integers and floats count as ints and
floats; ``bool`` never counts as a number.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int | None = None, optional: bool = False) -> int | None:
    """``value`` as a plain int, at least ``minimum``; ``None`` passes when ``optional``."""
    if value is None and optional:
        return None
    allowed = "an int" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if optional else "")
    if not _is_int(value):
        raise TypeError(f"`{name}` must be {allowed}, got {value!r}")
    if minimum is not None and value < minimum:  # type: ignore[operator]
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_float(
    name: str, value: object, low: float, high: float, *, high_open: bool = False, what: str = "a number"
) -> float:
    """``value`` as a float in ``[low, high]`` (or ``[low, high)`` with ``high_open``)."""
    interval = f"[{low}, {high}{')' if high_open else ']'}"
    if not _is_real(value):
        raise TypeError(f"`{name}` must be {what} in {interval}, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not (low <= number <= high) or (high_open and number == high):
        raise ValueError(f"`{name}` must be {what} in {interval}, got {value!r}")
    return number


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}")
    return value


def check_callable(name: str, value: object, signature: str, optional: bool = True) -> Callable | None:
    if value is None and optional:
        return None
    if not callable(value):
        raise TypeError(
            f"`{name}` must be a callable {signature}{' or None' if optional else ''}, got {value!r}"
        )
    return value


def check_list(
    name: str,
    value: object,
    item: Callable[[object], bool],
    what: str,
    optional: bool = False,
    choices: Sequence[str] | None = None,
) -> tuple | None:
    """A list or tuple whose every item passes ``item``; a lone string or number is refused (a
    frequent slip: ``plots="heatmap"``, ``heads=1``)."""
    if value is None and optional:
        return None
    allowed = (
        f"a list of {what}"
        + (f" drawn from {list(choices)}" if choices else "")
        + (" or None" if optional else "")
    )
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"`{name}` must be {allowed}, got {value!r}")
    bad = [v for v in value if not item(v) or (choices is not None and v not in choices)]
    if bad:
        raise ValueError(f"`{name}` must be {allowed}; {bad[0]!r} is not, got {value!r}")
    return tuple(int(v) if _is_int(v) else v for v in value)


def is_index(value: object) -> bool:
    return _is_int(value) and value >= 0  # type: ignore[operator]


def is_layer_selector(value: object) -> bool:
    return _is_int(value) or isinstance(value, str)


def check_rgb_stats(name: str, value: Any, positive: bool) -> tuple[float, ...] | None:
    """Per-channel image statistics (``image_mean``/``image_std``): 1 or 3 finite numbers."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be None or 1 or 3 numbers (one per channel), got {value!r}")
    if len(value) not in (1, 3):
        raise ValueError(f"`{name}` must be None or 1 or 3 numbers (one per channel), got {value!r}")
    numbers_ = []
    for v in value:
        finite = _is_real(v) and abs(float(v)) < float("inf")  # NaN fails too
        if not finite or (positive and float(v) <= 0):
            raise ValueError(
                f"`{name}` must hold finite numbers{' > 0' if positive else ''} (one per channel), "
                f"got {value!r}"
            )
        numbers_.append(float(v))
    return tuple(numbers_)


def missing_heads_message(heads: Sequence[int], layers: dict[str, int]) -> str | None:
    """The warning for ``heads=`` naming heads that some of ``layers`` (name -> head count) lack, or
    ``None`` when every layer has them all; said by the callback at setup where a module declares its
    heads, and by the drawing side at the first capture for the others."""
    missing = {h: [n for n, count in layers.items() if h >= count] for h in heads}
    said = "; ".join(
        f"head {h} in "
        + ", ".join(f"{n!r} ({layers[n]} heads)" for n in names[:3])
        + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        for h, names in missing.items()
        if names
    )
    if not said:
        return None
    return (
        f"AttentionMonitor: `heads={list(heads)}` names heads these layers do not have: {said}. Heads "
        "count from 0; no heatmap is drawn for a head that does not exist."
    )
