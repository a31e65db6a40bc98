"""The teacher soft-label cache: the contract between the ``teacher-cache`` command and training.

Only this package knows the layout; everything else goes through :class:`CacheWriter`,
:class:`TeacherCache` and :func:`verify_cache`. One module per role:

* :mod:`~distill.cache.format`: format version, file and array names, case ids, :class:`CacheError`;
* :mod:`~distill.cache.quantise`: how arrays are quantised, with the measured error bounds;
* :mod:`~distill.cache.spec`: what a cache holds (:class:`CacheSpec`) and the case keys;
* :mod:`~distill.cache.entries`: the committed entry of a case and what a reader returns;
* :mod:`~distill.cache.layout`: where files are in a cache folder, and reading them back;
* :mod:`~distill.cache.storage`: zarr chunking, codecs, region bit field, array checksums;
* :mod:`~distill.cache.durability`: crash-safe commits, fsync, disk-full errors;
* :mod:`~distill.cache.manifest`: the manifest that vouches for a complete cache;
* :mod:`~distill.cache.writer`: :class:`CacheWriter` (and the concurrency rules);
* :mod:`~distill.cache.reader`: :class:`TeacherCache`;
* :mod:`~distill.cache.verify`: :func:`verify_cache` and :func:`remove_leftovers`.

Layout of one cache folder::

    <cache>/
      spec.json                   written once, when the cache is created: format version,
                                  teacher (TeacherInfo.to_dict()), mode ("full" | "oof"),
                                  preprocessing config, quantisation, storage, toolkit version
      expected.json               optional: the case ids the run means to write (progress only)
      cases/
        <case_id>.json            the case entry (key, shapes, checksums, preprocess record ...)
        <case_id>.<token>.zarr/   zarr v3 group, never modified once it carries this name:
            images          float16 (4, X, Y, Z)  z-scored student inputs
            probabilities   uint8   (K, X, Y, Z)  p = q / 255
            uncertainty     uint8   (K, X, Y, Z)  std = q / 510
            regions         uint8   (X, Y, Z)     ground truth, bit 0 WT, bit 1 TC, bit 2 ET
                                                  (only when the case has labels)
            (each array folder: zarr.json plus chunk files c.<i>.<j>.<k>.<l>)
        .<name>.partial           a writer's work in progress, or debris of a killed writer
      manifest.json               written last, only when every expected case is complete

All arrays lie on Distill's preprocessed grid (cropped to the brain, optionally resampled,
padded), the grid students train on; the entry's preprocess record maps them back to the
original image. Chunking and codecs: :mod:`~distill.cache.storage`.

Completeness rule: a case is complete iff ``cases/<case_id>.json`` exists (and
:func:`verify_cache` passes). A writer writes the zarr group into a hidden ``.partial``
folder, renames it to a fresh ``<case_id>.<token>.zarr`` and only then replaces the entry
JSON atomically; that rename of the entry is the commit. A killed writer therefore leaves at
most an unreferenced folder, never an entry pointing at half-written data, and a stale case
stays readable until its replacement commits. The cache as a whole is complete iff
``manifest.json`` exists: :meth:`CacheWriter.finalize` writes it when every expected case is
complete, and every :meth:`CacheWriter.write_case` deletes it before committing, so a
manifest never vouches for a cache that changed after it was written.
"""

from distill.cache.entries import CachedCase, CachedPatch, CaseEntry
from distill.cache.format import CACHE_FORMAT_VERSION, MODES, CacheError, check_case_id
from distill.cache.quantise import Quantiser, default_quantisation, measure_error
from distill.cache.reader import TeacherCache
from distill.cache.spec import CacheSpec, case_key, teacher_identity_hash
from distill.cache.storage import default_storage, pack_regions, unpack_regions
from distill.cache.verify import VerifyReport, remove_leftovers, verify_cache
from distill.cache.writer import CacheWriter

__all__ = [
    "CACHE_FORMAT_VERSION",
    "MODES",
    "CacheError",
    "CacheSpec",
    "CacheWriter",
    "CachedCase",
    "CachedPatch",
    "CaseEntry",
    "Quantiser",
    "TeacherCache",
    "VerifyReport",
    "case_key",
    "check_case_id",
    "default_quantisation",
    "default_storage",
    "measure_error",
    "pack_regions",
    "remove_leftovers",
    "teacher_identity_hash",
    "unpack_regions",
    "verify_cache",
]
