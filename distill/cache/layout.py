"""Where things are inside one cache folder (:class:`Layout`) and how its JSON files are read back.

Every reader of a cache (writer, reader, verifier) loads the spec and the case entries
through these functions, so a missing, malformed or foreign file is one :class:`CacheError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.cache.entries import CaseEntry
from distill.cache.format import (
    CASES_DIR,
    ENTRY_SUFFIX,
    EXPECTED_FILE,
    MANIFEST_FILE,
    SPEC_FILE,
    CacheError,
    check_format_version,
)
from distill.cache.spec import CacheSpec
from distill.core.jsonfile import read_json_object


class Layout:
    """File names inside one cache folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = root / SPEC_FILE
        self.manifest = root / MANIFEST_FILE
        self.expected = root / EXPECTED_FILE
        self.cases = root / CASES_DIR

    def entry(self, case_id: str) -> Path:
        return self.cases / f"{case_id}{ENTRY_SUFFIX}"

    def data(self, name: str) -> Path:
        if "/" in name or "\\" in name or name.startswith("."):
            raise CacheError(f"{self.cases}: entry names a data folder outside the cache ({name!r})")
        return self.cases / name

    def entry_ids(self) -> list[str]:
        """Case ids with an entry file (not necessarily valid)."""
        if not self.cases.is_dir():
            return []
        return sorted(
            p.name[: -len(ENTRY_SUFFIX)]
            for p in self.cases.iterdir()
            if p.name.endswith(ENTRY_SUFFIX) and not p.name.startswith(".")
        )


def load_spec(layout: Layout) -> CacheSpec:
    if not layout.spec.is_file():
        raise CacheError(f"{layout.root}: not a teacher cache (no {SPEC_FILE})")
    data = read_json_object(layout.spec, "cache spec", error=CacheError)
    check_format_version(data, layout.spec)
    try:
        return CacheSpec.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{layout.spec}: malformed cache spec ({exc})") from exc


def load_manifest(layout: Layout) -> dict[str, Any]:
    data = read_json_object(layout.manifest, "cache manifest", error=CacheError)
    check_format_version(data, layout.manifest)
    return data


def load_entry(layout: Layout, case_id: str) -> CaseEntry:
    path = layout.entry(case_id)
    data = read_json_object(path, f"entry of case {case_id}", error=CacheError)
    check_format_version(data, path)
    try:
        entry = CaseEntry.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{path}: malformed case entry ({exc})") from exc
    if entry.case_id != case_id:
        raise CacheError(f"{path}: entry is for case {entry.case_id!r}, not {case_id!r}")
    return entry


def load_entry_or_none(layout: Layout, case_id: str) -> CaseEntry | None:
    """The committed entry of ``case_id``, or ``None`` when absent or unusable (then it is rewritten)."""
    try:
        return load_entry(layout, case_id)
    except CacheError:
        return None


def data_folder_present(layout: Layout, entry: CaseEntry) -> bool:
    try:
        return layout.data(entry.data).is_dir()
    except CacheError:
        return False


def read_expected(layout: Layout) -> list[str] | None:
    if not layout.expected.is_file():
        return None
    return [
        str(c) for c in read_json_object(layout.expected, "expected case list", error=CacheError).get("case_ids", [])
    ]
