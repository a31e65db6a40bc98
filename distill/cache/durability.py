"""Writes that survive a kill, a power cut or a full disk, and say so in one line when they fail.

A case entry is committed by one atomic rename (:func:`write_entry`); the spec is created at
most once by a hard link (:func:`publish_once`); data folders are fsynced before they are
renamed (:func:`fsync_tree`); a failed write becomes one :class:`CacheError` that names a full
disk as such (:func:`write_error`).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from distill.cache.entries import CaseEntry
from distill.cache.format import CacheError
from distill.core.atomic import PARTIAL_SUFFIX, atomic_write_json, current_umask

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def write_entry(path: Path, entry: CaseEntry) -> None:
    """Commit a case: atomically replace its entry JSON."""
    atomic_write_json(path, entry.to_dict())


def publish_once(target: Path, obj: Any) -> None:
    """Create ``target`` holding ``obj`` as JSON unless it already exists, atomically.

    A hard link fails if the target exists, so of several processes creating a cache at
    once exactly one file wins and nobody ever sees a half-written one.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(obj, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o666 & ~current_umask())  # mkstemp makes it 0600; outputs follow the umask
        try:
            os.link(tmp_name, target)
        except FileExistsError:
            pass
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` or anything it was raised from is ENOSPC / EDQUOT."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder below ``folder`` so a power cut cannot leave committed garbage."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(exc: BaseException, doing: str, committed_nothing: bool = False) -> CacheError:
    """A one-line error for a failed write: disk full said as such, otherwise the OS's reason."""
    tail = "; nothing was committed for this case" if committed_nothing else ""
    if is_disk_full(exc):
        return CacheError(f"disk full while {doing}{tail}")
    return CacheError(f"could not finish {doing} ({getattr(exc, 'strerror', None) or exc}){tail}")
