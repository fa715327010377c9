"""Keys acted on once: a warning given once per fit and cause, however often its cause recurs."""

from __future__ import annotations

from collections.abc import Iterable


class Once:
    """Remembers keys, so that whatever a key stands for (mostly a warning) happens the first time only.

    Its state is the sorted keys, a small picklable list, so a resumed fit does not say again what was
    said before the checkpoint.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._seen: set[str] = set(keys)

    def first(self, key: str) -> bool:
        """``True`` the first time ``key`` is asked about (and remembers it), ``False`` after."""
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def state(self) -> list[str]:
        return sorted(self._seen)
