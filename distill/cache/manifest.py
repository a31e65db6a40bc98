"""The manifest: written last, it vouches that every expected case is complete and unchanged.

:func:`build_manifest` is what :meth:`CacheWriter.finalize` writes (deterministic, so every
shard writes the same bytes); :func:`entries_listed_in` is how a reader checks that no case
changed after it was written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from distill import __version__
from distill.cache.entries import CaseEntry
from distill.cache.format import CACHE_FORMAT_VERSION, MANIFEST_FILE, QUANTISED_ARRAYS, CacheError
from distill.cache.layout import Layout, load_entry_or_none, read_expected
from distill.cache.spec import CacheSpec


def build_manifest(spec: CacheSpec, entries: Mapping[str, CaseEntry]) -> dict[str, Any]:
    """Deterministic (no time stamps), so every shard that finalises writes the same bytes."""
    ordered = [entries[case_id] for case_id in sorted(entries)]
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "finalized_by": __version__,
        "spec_hash": spec.identity_hash,
        "teacher_identity_hash": spec.teacher_hash,
        "mode": spec.mode,
        "n_cases": len(ordered),
        "quantisation_error": _summarise_errors(spec, ordered),
        "cases": [
            {"case_id": e.case_id, "key": e.key, "data": e.data, "sha256": _checksums(e)}
            for e in ordered
        ],
        "spec": spec.to_dict(),
    }


def _checksums(entry: CaseEntry) -> dict[str, str]:
    return {name: array["sha256"] for name, array in entry.arrays.items()}


def _summarise_errors(spec: CacheSpec, entries: Sequence[CaseEntry]) -> dict[str, dict[str, Any]]:
    """Per array: worst max abs error over cases, mean of the per-case mean abs errors, and the bound."""
    summary = {}
    for name in QUANTISED_ARRAYS:
        measured = [e.quantisation_error[name] for e in entries if name in e.quantisation_error]
        summary[name] = {
            "max_abs": max((m["max_abs"] for m in measured), default=0.0),
            "mean_abs": float(np.mean([m["mean_abs"] for m in measured])) if measured else 0.0,
            "bound": spec.quantiser(name).max_abs_error_bound,
        }
    return summary


def entries_listed_in(layout: Layout, spec: CacheSpec, manifest: Mapping[str, Any]) -> dict[str, CaseEntry]:
    """The entries a manifest lists, checking that the cache did not change after it was written."""
    if manifest.get("spec_hash") != spec.identity_hash:
        raise CacheError(
            f"{layout.manifest}: manifest belongs to another spec than {layout.spec}; re-run teacher-cache"
        )
    entries = {}
    for item in manifest.get("cases", []):
        case_id = str(item["case_id"])
        entry = load_entry_or_none(layout, case_id)
        if entry is None or entry.key != item.get("key") or entry.data != item.get("data"):
            raise CacheError(
                f"{layout.root}: case {case_id} changed or vanished after the manifest was written; "
                "re-run teacher-cache with the same arguments to complete and re-finalise the cache"
            )
        entries[case_id] = entry
    return entries


def incomplete_message(layout: Layout) -> str:
    done = set(layout.entry_ids())
    expected = read_expected(layout)
    if expected is not None:
        progress = f"{len(done & set(expected))} of {len(expected)} cases done"
    else:
        progress = f"{len(done)} cases done, total unknown"
    return (
        f"{layout.root}: cache incomplete ({progress}; no {MANIFEST_FILE}, which is written when every case is done). "
        "Re-run teacher-cache with the same arguments to finish it; complete cases are skipped."
    )
