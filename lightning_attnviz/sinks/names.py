"""The names each logger takes: a tag rewritten once, the way that tool wants it.

TensorBoard and CSV keep the tags (:mod:`lightning_attnviz.sinks.tags`) as they are. W&B groups panels by
``/`` and wants GraphQL-style names; MLflow allows ``/`` (folders) but refuses other characters and
names that a path would resolve; files must be safe on every file system. A rewrite never merges two
tags: the later one gets a digest of its tag.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

MLFLOW_NAME = 250  # MLflow's longest metric name (MAX_ENTITY_KEY_LENGTH)
MLFLOW_IMAGE_KEY = 150  # log_image puts the key, step, time and a uuid (~90 more) into one file name
FILE_SEGMENT = 100  # one folder or file name, in bytes (file systems allow 255)
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _bounded(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` characters, with a digest of the whole so cut names stay distinct."""
    return name if len(name) <= limit else f"{name[: limit - 9]}_{_digest(name)}"


def wandb_name(tag: str) -> str:
    """W&B: ``/`` stays (it makes the panel sections); every other character outside ``[A-Za-z0-9_]``
    becomes ``_``. A ``.`` is W&B's separator of nested metrics: a dotted name misses the
    ``trainer/global_step`` axis, and W&B sorts and filters only GraphQL-style names."""
    return re.sub(r"[^A-Za-z0-9_/]", "_", tag)


def mlflow_name(tag: str, limit: int = MLFLOW_NAME) -> str:
    """MLflow: letters, digits, ``_ - . /`` and space stay (``/`` makes folders); the rest becomes
    ``_``; no empty, ``.`` or ``..`` segment (MLflow refuses names that a path would resolve)."""
    name = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", tag)
    name = "/".join("_" if part in ("", ".", "..") else part for part in name.split("/"))
    return _bounded(name, limit)


def _file_segment(part: str) -> str:
    """A folder or file name safe on every file system: ``[A-Za-z0-9_.-]``, no leading dot, no
    Windows device name, at most ``FILE_SEGMENT`` bytes."""
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", part).rstrip(".") or "_"
    if name.startswith(".") or name.split(".")[0].upper() in _RESERVED:
        name = f"_{name}"
    return _bounded(name, FILE_SEGMENT)


def file_path(tag: str) -> str:
    """A tag as a relative path (its ``/`` make folders), every part file-system safe."""
    return "/".join(_file_segment(part) for part in tag.split("/"))


class Names:
    """Tag → the name one logger takes, rewritten once and remembered; two tags that a rewrite would
    merge stay apart (the later one gets a digest of its tag)."""

    def __init__(self, rule: Callable[[str], str]) -> None:
        self._rule = rule
        self._names: dict[str, str] = {}
        self._owners: dict[str, str] = {}

    def __call__(self, tag: str) -> str:
        name = self._names.get(tag)
        if name is None:
            name = self._rule(tag)
            if self._owners.get(name, tag) != tag:
                name = f"{name}_{_digest(tag)}"
            self._names[tag], self._owners[name] = name, tag
        return name
