"""Benchmarks are scripts, not packages: load one by its path for a test."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType


@contextlib.contextmanager
def script_module(path: Path, name: str) -> Iterator[ModuleType]:
    """The script at ``path`` as module ``name``, registered in ``sys.modules`` while in use
    (dataclasses look their module up there) and removed afterwards."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
