"""The cache format's fixed names and rules: version, file and array names, case ids, :class:`CacheError`.

Everything in :mod:`distill.cache` spells the format with these constants; a reader that
meets another format version refuses it with :func:`check_format_version`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distill import __version__
from distill.errors import DistillError

CACHE_FORMAT_VERSION = 1
MODES = ("full", "oof")  # every member on every case / only members that did not train on it

SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
EXPECTED_FILE = "expected.json"
CASES_DIR = "cases"
DATA_SUFFIX = ".zarr"
ENTRY_SUFFIX = ".json"

IMAGES = "images"
PROBABILITIES = "probabilities"
UNCERTAINTY = "uncertainty"
REGIONS_ARRAY = "regions"
QUANTISED_ARRAYS = (IMAGES, PROBABILITIES, UNCERTAINTY)
N_IMAGE_CHANNELS = 4

# Case ids become file names: no separators, no leading dot (hidden names are work in progress).
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Teachers' float32 maps may overshoot [0, 1] by rounding; anything further out is a bug upstream.
RANGE_SLACK = 1e-3


class CacheError(DistillError):
    """A teacher cache is missing, incomplete, damaged, of another format or teacher, or cannot be written."""


def check_case_id(case_id: str) -> None:
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id):
        raise CacheError(
            f"case id {case_id!r} cannot name a cache file (letters, digits, '_', '-', '.'; not starting with '.')"
        )


def check_format_version(data: Mapping[str, Any], path: Path) -> None:
    version = data.get("format_version")
    if version != CACHE_FORMAT_VERSION:
        raise CacheError(
            f"{path}: written in teacher-cache format version {version} (by distill "
            f"{data.get('toolkit_version', data.get('finalized_by', '?'))}); this toolkit (distill {__version__}) "
            f"reads format version {CACHE_FORMAT_VERSION} only. Re-create the cache with this toolkit."
        )
