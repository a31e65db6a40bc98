"""What produced an output folder, so that a rerun with other options never mixes results.

A resumable command (``distill data convert``, ``distill data phantoms``, ``distill predict
--skip-existing``) keeps the files a previous run finished. That is only right when the
previous run used the same options: files converted at 2 mm must not be "resumed" into a
1 mm dataset. Such a command calls :func:`claim_output` before any work. The first run writes
a small JSON record of its options into the folder; a later run with the same options goes
on; one with different options stops with an error naming each differing option, its
recorded value and the value asked for. The rule is the one the teacher cache and
``train-student`` follow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distill.core.atomic import atomic_write_json
from distill.errors import DataError

RECORD_KEY = "options"


def _normalised(value: Any) -> Any:
    """JSON's view of ``value`` (tuples become lists, paths strings), so that records compare."""
    return json.loads(json.dumps(value, default=str))


def differing_options(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """Names whose value differs, in ``asked``'s order; a name missing on one side differs."""
    names = list(asked) + [k for k in recorded if k not in asked]
    return [k for k in names if _normalised(recorded.get(k)) != _normalised(asked.get(k))]


def claim_output(
    folder: str | Path,
    record_name: str,
    command: str,
    options: Mapping[str, Any],
    flags: Mapping[str, str] | None = None,
    legacy: Mapping[str, Any] | None = None,
) -> Path:
    """Record ``options`` in ``folder/record_name``, or check them against the record there.

    Args:
        folder: the output folder (created if missing).
        record_name: file name of the record inside ``folder``.
        command: how the user runs the command, for the message (``"distill data convert"``).
        options: option name -> value of this run; JSON-serialisable.
        flags: option name -> command-line flag to show (default ``--name-with-dashes``).
        legacy: options recovered from an output written before records existed (checked the
            same way, then recorded); ``None`` when there is nothing to recover.

    Raises:
        DataError: the folder was produced with other options; the message names each one.
    """
    folder = Path(folder)
    path = folder / record_name
    recorded: Mapping[str, Any] | None = legacy
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())[RECORD_KEY]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: unreadable record of the run that made this folder ({exc}); "
                            "remove the folder or choose another output") from exc  # fmt: skip
    if recorded is not None:
        differing = differing_options(recorded, options)
        if differing:
            flags = flags or {}
            detail = "; ".join(f"{flags.get(k, '--' + k.replace('_', '-'))} was {_shown(recorded.get(k))}, "
                               f"now {_shown(options.get(k))}" for k in differing)  # fmt: skip
            raise DataError(
                f"{folder}: made by {command} with other options ({detail}); rerun with the same options to "
                "resume, or write to another folder (or remove this one) to start afresh"
            )
    if not path.is_file():
        atomic_write_json(path, {"command": command, RECORD_KEY: _normalised(dict(options))})
    return path


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(_normalised(value))


__all__ = ["claim_output", "differing_options"]
