"""Reading a ``.npz`` archive that is not trusted: every member's own ``.npy`` header (shape, dtype) is
checked against the bytes the archive holds and against the limits below before any array is read,
so that no file (a zip bomb, a lying header) makes a reader allocate more than the limits."""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_MEMBER_BYTES = 256 << 20  # an uncompressed array larger than this is refused (zip bombs)
MAX_TOTAL_BYTES = 512 << 20  # all arrays of one file together, as they decode (six members under the limit)
MAX_META_BYTES = 16 << 20
READ_ERRORS = (
    OSError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    ValueError,
    KeyError,
    TypeError,
    RuntimeError,  # zipfile: encrypted members; json: nesting too deep
    NotImplementedError,  # zipfile: a compression method it does not know
)


class CaptureFileError(ValueError):
    """A saved capture that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Member:
    """One ``.npy`` member as its own header declares it, checked before it is read."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype


def read_members(path: Path, archive: zipfile.ZipFile) -> dict[str, Member]:
    """Every ``.npy`` member by key, from the headers alone; refused when one member or all of them
    together would decode to more than the limits."""
    members: dict[str, Member] = {}
    check_sizes(path, [(i.filename, i.file_size) for i in archive.infolist()])  # the archive's claim
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            continue
        with archive.open(info) as f:
            shape, dtype = _header(f)
            start = f.tell()
        size = math.prod(shape) * dtype.itemsize
        if dtype.hasobject or start + size != info.file_size:
            raise CaptureFileError(
                f"{path}: member {info.filename!r} declares {dtype} {shape} ({size} bytes) but the "
                f"archive holds {info.file_size - start} bytes of plain data"
            )
        members[info.filename[: -len(".npy")]] = Member(info, shape, dtype)
    return members


def check_sizes(path: Path, sizes: list[tuple[str, int]]) -> None:
    """Refuse a member over its limit, or members over :data:`MAX_TOTAL_BYTES` together."""
    for name, size in sizes:
        limit = MAX_META_BYTES if name == "meta.npy" else MAX_MEMBER_BYTES
        if size > limit:
            raise CaptureFileError(f"{path}: member {name!r} expands to {size} bytes (limit {limit})")
    total = sum(size for _, size in sizes)
    if total > MAX_TOTAL_BYTES:
        raise CaptureFileError(
            f"{path}: its {len(sizes)} members expand to {total} bytes in all (limit {MAX_TOTAL_BYTES}); "
            "refused unread"
        )


def _header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header (versions 1.0 and 2.0, the ones numpy writes here)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"npy format version {version} is not one this library writes")
    return tuple(shape), dtype


def read_member(archive: zipfile.ZipFile, member: Member) -> np.ndarray:
    with archive.open(member.info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)
