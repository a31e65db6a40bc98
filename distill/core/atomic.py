"""Atomic file writes: write beside the target under a hidden temporary name, then rename.

A run that is killed half-way leaves at most a ``.*.partial`` file behind, never a file
with the final name that looks complete. ``os.replace`` is atomic on POSIX within one
file system, which is why the temporary file lives in the target's own folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    The temporary name keeps ``target``'s suffixes (``.nii.gz`` stays last) so libraries
    that pick a format from the extension still do the right thing, and carries the writer's
    process id so that :func:`distill.core.paths.remove_stale_partials` can tell a killed
    writer's leftover from a live one's file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.pid{os.getpid()}.", suffix=PARTIAL_SUFFIX + "".join(target.suffixes), dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; an output is created with the user's umask like any other file.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it
    process-wide for a moment, which another thread could observe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and fsync it; returns the final path."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")
