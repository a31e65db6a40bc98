"""Checking a cache: :func:`verify_cache` decodes everything and compares it with the entries.

Checksums: each entry holds the sha256 of every array as stored (quantised dtype, C order,
after decoding), so the check is independent of chunking and codec and covers what a reader
actually gets; :func:`verify_cache` decodes every array in full to compare. Missing chunk
files read back as zeros in zarr, which only this whole-array checksum can catch.

Debris of interrupted writers is reported as leftovers and removed by :func:`remove_leftovers`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.cache.format import CASES_DIR, DATA_SUFFIX, MANIFEST_FILE, QUANTISED_ARRAYS, CacheError
from distill.cache.layout import Layout, load_entry, load_entry_or_none, load_manifest, load_spec, read_expected
from distill.cache.spec import CacheSpec
from distill.cache.storage import array_sha256, open_array
from distill.core.atomic import PARTIAL_SUFFIX


@dataclass
class VerifyReport:
    """Result of :func:`verify_cache`.

    Attributes:
        path: the cache.
        problems: cache-level errors (spec, manifest).
        cases: case id -> problems of that case (empty list: the case is fine).
        missing: cases the manifest (or expected list) names that have no entry.
        unlisted: committed cases the manifest does not list (warning only).
        leftovers: partial or unreferenced files from interrupted writers (warning only;
            :func:`remove_leftovers` deletes them).
    """

    path: Path
    problems: list[str] = field(default_factory=list)
    cases: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)

    @property
    def bad_cases(self) -> dict[str, list[str]]:
        return {case_id: found for case_id, found in self.cases.items() if found}

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_cases and not self.missing

    def lines(self) -> list[str]:
        """One line per finding, for the CLI."""
        out = [f"{self.path}: {'OK' if self.ok else 'FAILED'} ({len(self.cases)} cases checked)"]
        out += [f"  problem: {p}" for p in self.problems]
        out += [f"  {case_id}: {p}" for case_id, found in sorted(self.bad_cases.items()) for p in found]
        out += [f"  missing case: {case_id}" for case_id in self.missing]
        out += [f"  warning: case {case_id} is not listed in the manifest" for case_id in self.unlisted]
        out += [f"  warning: leftover {name}" for name in self.leftovers]
        return out


def verify_cache(path: str | os.PathLike[str]) -> VerifyReport:
    """Check every entry against the spec and manifest and every array against its checksum.

    Decodes every array in full (each chunk's crc32c and the whole array's sha256).
    """
    layout = Layout(Path(path))
    report = VerifyReport(path=layout.root)
    try:
        spec = load_spec(layout)
    except CacheError as exc:
        report.problems.append(str(exc))
        return report
    manifest = _verify_manifest(layout, spec, report)
    listed = {str(c["case_id"]): c for c in manifest.get("cases", [])} if manifest else {}
    for case_id in layout.entry_ids():
        report.cases[case_id] = _verify_case(layout, spec, case_id, listed.get(case_id))
    expected = list(listed) if manifest else (read_expected(layout) or [])
    report.missing = sorted(set(expected) - set(report.cases))
    if manifest:
        report.unlisted = sorted(set(report.cases) - set(listed))
    report.leftovers = _find_leftovers(layout)
    return report


def _verify_manifest(layout: Layout, spec: CacheSpec, report: VerifyReport) -> dict[str, Any] | None:
    if not layout.manifest.is_file():
        report.problems.append(f"no {MANIFEST_FILE}: the cache is incomplete or changed after it was finalised")
        return None
    try:
        manifest = load_manifest(layout)
    except CacheError as exc:
        report.problems.append(str(exc))
        return None
    if manifest.get("spec_hash") != spec.identity_hash:
        report.problems.append(f"{MANIFEST_FILE} was written for another spec ({manifest.get('spec_hash')})")
    return manifest


def _verify_case(layout: Layout, spec: CacheSpec, case_id: str, listed: Mapping[str, Any] | None) -> list[str]:
    try:
        entry = load_entry(layout, case_id)
    except CacheError as exc:
        return [str(exc)]
    found = []
    if entry.spec_hash != spec.identity_hash:
        found.append(f"written under another spec ({entry.spec_hash})")
    if listed is not None and (listed.get("key") != entry.key or listed.get("data") != entry.data):
        found.append("entry differs from the manifest (rewritten after finalize)")
    missing_arrays = [name for name in QUANTISED_ARRAYS if name not in entry.arrays]
    if missing_arrays:
        found.append(f"entry lacks arrays {missing_arrays}")
    try:
        folder = layout.data(entry.data)
    except CacheError as exc:
        return found + [str(exc)]
    if not folder.is_dir():
        return found + [f"data folder {entry.data} is missing"]
    for name, expected in entry.arrays.items():
        found += _verify_array(folder, name, expected)
    return found


def _verify_array(folder: Path, name: str, expected: Mapping[str, Any]) -> list[str]:
    try:
        array = open_array(folder, name)
    except Exception as exc:
        return [f"array {name!r} unreadable ({type(exc).__name__}: {exc})"]
    if list(array.shape) != list(expected["shape"]) or str(array.dtype) != expected["dtype"]:
        return [f"array {name!r} is {array.dtype} {array.shape}, entry says {expected['dtype']} {expected['shape']}"]
    try:
        data = array[...]
    except Exception as exc:
        return [f"array {name!r} undecodable ({type(exc).__name__}: {exc})"]
    if array_sha256(data) != expected["sha256"]:
        return [f"array {name!r} checksum mismatch (stored data differ from what was written)"]
    return []


def _find_leftovers(layout: Layout) -> list[str]:
    """Hidden partial files/folders and data folders no entry refers to."""
    if not layout.cases.is_dir():
        return []
    referenced = set()
    for case_id in layout.entry_ids():
        entry = load_entry_or_none(layout, case_id)
        if entry is not None:
            referenced.add(entry.data)
    leftovers = []
    for path in sorted(layout.cases.iterdir()):
        if path.name.startswith(".") or (path.name.endswith(DATA_SUFFIX) and path.name not in referenced):
            leftovers.append(f"{CASES_DIR}/{path.name}")
    leftovers += [p.name for p in sorted(layout.root.iterdir()) if p.name.startswith(".") and PARTIAL_SUFFIX in p.name]
    return leftovers


def remove_leftovers(path: str | os.PathLike[str]) -> list[str]:
    """Delete what interrupted writers left behind; returns what was removed.

    Only call this while no writer is running: a running writer's work in progress looks
    exactly like debris.
    """
    layout = Layout(Path(path))
    load_spec(layout)  # refuse to delete anything in a folder that is not a cache
    removed = _find_leftovers(layout)
    for name in removed:
        target = layout.root / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    return removed
