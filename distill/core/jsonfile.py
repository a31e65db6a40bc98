"""Reading the small JSON files Distill writes (manifests, cards, records) with one kind of error.

Every reader says which file was bad and why in one line, and what to do about it, instead
of a ``JSONDecodeError`` traceback; writing goes through :func:`distill.core.atomic.atomic_write_json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.errors import DistillError


def read_json_object(path: str | os.PathLike[str], what: str = "file", remedy: str = "",
                     error: type[DistillError] = DistillError) -> dict[str, Any]:  # fmt: skip
    """The JSON object stored at ``path``.

    Args:
        what: what the file is, for the message (``"manifest"``, ``"student card"``).
        remedy: what the user should do, appended to the message (e.g. ``"re-export the package"``).
        error: the :class:`DistillError` subclass to raise.

    Raises:
        error: the file is missing, unreadable, not UTF-8, not JSON, or not a JSON object.
    """
    path = Path(path)
    tail = f"; {remedy}" if remedy else ""
    if not path.is_file():
        raise error(f"{path}: no such {what}{tail}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable {what} ({exc}){tail}") from exc
    if not isinstance(document, dict):
        raise error(f"{path}: the {what} is not a JSON object{tail}")
    return document
