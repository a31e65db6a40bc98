"""Output locations checked before any work starts, and leftovers of killed writers removed.

A command that finds out only at the end that it cannot write its output loses the work
(``distill bench`` used to lose its table). Every command therefore calls
:func:`prepare_output_dir` or :func:`prepare_output_file` first: the folder is created (with
its parents) and a probe file is written and removed, so a read-only file system, a missing
permission or a path that is an existing file is reported at once, as one line naming it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from distill.core.atomic import PARTIAL_SUFFIX, current_umask
from distill.errors import DataError

# atomic_path names temporaries ".<target name>.pid<PID>.<random>.partial<suffixes>"
_PARTIAL = re.compile(r"^\.(?P<target>.+?)\.(?:pid(?P<pid>\d+)\.)?[^.]+" + re.escape(PARTIAL_SUFFIX) + r"(\..*)?$")


def os_error_line(exc: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """``<path>: <reason>`` for an OS error, e.g. ``out/metrics.csv: No space left on device``."""
    where = path if path is not None else (exc.filename if exc.filename is not None else "")
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    elif exc.errno == errno.EROFS:
        reason = "read-only file system"
    return f"{where}: {reason}" if where != "" else reason


def prepare_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) and check that files can be written into it.

    Raises :class:`DataError` naming ``path`` if it is an existing file, lies below a file,
    cannot be created or is not writable. Returns the path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: the {what} is an existing file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{path}: cannot create the {what}: {parent} is a file, not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".distill-write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"cannot write the {what}: {os_error_line(exc, path)}") from exc
    return path


def prepare_output_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Check that ``path`` can be written: its folder is prepared and it is not a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: the {what} is an existing folder, not a file")
    prepare_output_dir(path.parent if str(path.parent) else Path("."), f"folder of the {what}")
    return path


def staging_dir(target: str | os.PathLike[str]) -> Path:
    """A new hidden folder beside ``target`` to build it in, named after its writer's process
    (so that :func:`remove_stale_staging` can tell a killed writer's leftover from a live one's)."""
    target = Path(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_SUFFIX}-pid{os.getpid()}-", dir=target.parent))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it owner-only; outputs follow the user's umask
    return staging


def remove_stale_staging(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the staging folders (see :func:`staging_dir`) that killed writers of ``target`` left."""
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}{PARTIAL_SUFFIX}-") + r"(?:pid(?P<pid>\d+)-)?[^/]+$")
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        pid = match.group("pid")
        if pid is not None and (int(pid) == os.getpid() or _process_alive(int(pid))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_partials(folder: str | os.PathLike[str], depth: int = 1) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder``; returns what was removed.

    A temporary written by :func:`distill.core.atomic.atomic_path` carries its writer's process
    id; it is removed only when that process no longer runs on this machine, so a concurrent
    writer's file is left alone. Temporaries from before the process id was recorded are removed.
    ``depth`` > 1 also looks into subfolders that many levels down (a dataset's case folders).
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if depth > 1 and entry.is_dir() and not entry.is_symlink():
            removed += remove_stale_partials(entry, depth - 1)
            continue
        match = _PARTIAL.match(entry.name)
        if match is None or not entry.is_file():
            continue
        pid = match.group("pid")
        if pid is not None and (int(pid) == os.getpid() or _process_alive(int(pid))):
            continue
        try:
            entry.unlink()
        except OSError:
            continue  # another cleaner got there first, or it is not ours to remove
        removed.append(entry)
    return removed


__all__ = ["os_error_line", "prepare_output_dir", "prepare_output_file", "remove_stale_partials",
           "remove_stale_staging", "staging_dir"]
