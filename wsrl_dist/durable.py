"""Durable file writes: a file is fsynced before anything points at it, and replaced atomically.

A rename alone is atomic but not durable: after a power loss or a kernel crash the new name may
point at a file whose data never reached the disk (ext4 data=ordered narrows this, xfs does not).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """`write(f)` into `path`, then flush and fsync it: on disk before anything that points at it."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def replace_durably(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Atomic, durable replacement of one file: temp file fsynced, renamed over `path`, dir fsynced."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write_durably(tmp, write)
    os.replace(tmp, path)
    fsync_dir(path.parent)
