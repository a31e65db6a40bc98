"""What a cache holds and when two caches are the same: :class:`CacheSpec` and :func:`case_key`.

The spec is written once into ``spec.json``; writers joining a cache compare their spec with
it (:meth:`CacheSpec.differences`), and every case key is derived from its identity hash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from distill import __version__
from distill.cache.format import CACHE_FORMAT_VERSION, MODES, QUANTISED_ARRAYS, CacheError
from distill.cache.quantise import Quantiser, default_quantisation
from distill.cache.storage import default_storage
from distill.core.hashing import canonical_hash

# The fields every ``TeacherInfo.to_dict()`` carries (TeacherInfo's required fields).
TEACHER_FIELDS = ("name", "output_kind", "channels", "parameters_per_member", "members", "tta")


class TeacherDescription(Protocol):
    """What :meth:`CacheSpec.for_teacher` needs of a teacher's ``info`` (a ``TeacherInfo``)."""

    def to_dict(self) -> dict[str, Any]: ...


def json_normalised(obj: Any) -> Any:
    """What ``obj`` looks like after a JSON round trip (tuples become lists), so comparisons match files."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def teacher_identity_hash(teacher: Mapping[str, Any]) -> str:
    """Identity hash of a teacher description (``TeacherInfo.to_dict()``), by TeacherInfo's own rule.

    The rule (``TeacherInfo.identity_hash``): :func:`canonical_hash` of the output kind, the
    channels, the TTA and every ``identity`` field. It is restated here so that the cache does not
    import the teacher stage; ``tests/unit/test_cache.py`` holds the two equal.
    """
    missing = [name for name in TEACHER_FIELDS if name not in teacher]
    if missing:
        raise CacheError(
            f"teacher description is incomplete (missing {', '.join(missing)}); expected TeacherInfo.to_dict()"
        )
    identity = teacher.get("identity", {})
    return canonical_hash({"output_kind": teacher["output_kind"], "channels": teacher["channels"],
                           "tta": teacher["tta"], **identity})  # fmt: skip


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds; equal specs (by :attr:`identity_hash`) may share one cache.

    Attributes:
        teacher: ``TeacherInfo.to_dict()`` of the teacher.
        mode: ``"full"`` (every member on every case) or ``"oof"`` (out-of-fold members only).
        preprocessing: the preprocessing config (e.g. ``asdict(PreprocessConfig)``).
        quantisation: array name -> :class:`Quantiser` dict, for ``images``, ``probabilities``
            and ``uncertainty``.
        toolkit_version: the Distill version that created the cache (informational).
        storage: chunking and codec (informational; an existing cache keeps its own).
        format_version: :data:`CACHE_FORMAT_VERSION` of the writer.
    """

    teacher: dict[str, Any]
    mode: str
    preprocessing: dict[str, Any]
    quantisation: dict[str, Any] = field(default_factory=default_quantisation)
    toolkit_version: str = __version__
    storage: dict[str, Any] = field(default_factory=default_storage)
    format_version: int = CACHE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"cache mode must be one of {MODES}, got {self.mode!r}")
        for name in ("teacher", "preprocessing", "quantisation", "storage"):
            object.__setattr__(self, name, json_normalised(getattr(self, name)))
        missing = [name for name in QUANTISED_ARRAYS if name not in self.quantisation]
        if missing:
            raise ValueError(f"quantisation lacks {missing}")
        for name in QUANTISED_ARRAYS:
            self.quantiser(name)  # fail early on an unknown scheme

    @classmethod
    def for_teacher(
        cls, info: TeacherDescription, mode: str, preprocessing: Mapping[str, Any], **kwargs: Any
    ) -> CacheSpec:
        """The spec of a cache of the teacher described by ``info`` (a ``TeacherInfo``)."""
        return cls(teacher=info.to_dict(), mode=mode, preprocessing=dict(preprocessing), **kwargs)

    @property
    def teacher_hash(self) -> str:
        return teacher_identity_hash(self.teacher)

    @property
    def teacher_name(self) -> str:
        return str(self.teacher.get("name", "?"))

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.teacher.get("channels", ()))

    @property
    def identity_hash(self) -> str:
        """Hash of everything that changes the cached values (not the storage or toolkit version)."""
        quantisers = {name: Quantiser.from_dict(self.quantisation[name]).to_dict() for name in QUANTISED_ARRAYS}
        return canonical_hash(
            {
                "format_version": self.format_version,
                "teacher": self.teacher_hash,
                "mode": self.mode,
                "preprocessing": self.preprocessing,
                "quantisation": quantisers,
            }
        )

    def quantiser(self, name: str) -> Quantiser:
        return Quantiser.from_dict(self.quantisation[name])

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "teacher": self.teacher,
            "teacher_identity_hash": self.teacher_hash,
            "mode": self.mode,
            "preprocessing": self.preprocessing,
            "quantisation": self.quantisation,
            "storage": self.storage,
            "toolkit_version": self.toolkit_version,
            "identity_hash": self.identity_hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CacheSpec:
        return cls(
            teacher=dict(data["teacher"]),
            mode=str(data["mode"]),
            preprocessing=dict(data["preprocessing"]),
            quantisation=dict(data["quantisation"]),
            toolkit_version=str(data.get("toolkit_version", "?")),
            storage=dict(data.get("storage", default_storage())),
            format_version=int(data["format_version"]),
        )

    def differences(self, other: CacheSpec) -> list[str]:
        """Human-readable lines naming what differs between ``self`` (stored) and ``other`` (new)."""
        lines = []
        if self.format_version != other.format_version:
            lines.append(f"format version: cache {self.format_version}, this run {other.format_version}")
        if self.teacher_hash != other.teacher_hash:
            lines.append(
                f"teacher identity: cache {self.teacher_hash} ({self.teacher_name}), "
                f"this run {other.teacher_hash} ({other.teacher_name}); "
                f"differing fields: {', '.join(_teacher_field_differences(self.teacher, other.teacher)) or '?'}"
            )
        if self.mode != other.mode:
            lines.append(f"mode: cache {self.mode!r}, this run {other.mode!r}")
        for name in ("preprocessing", "quantisation"):
            keys = _differing_keys(getattr(self, name), getattr(other, name))
            if keys:
                lines.append(f"{name}: differs in {', '.join(keys)}")
        return lines


def _differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _teacher_field_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Which identity fields (``output_kind``, ``channels``, ``tta``, ``identity.*``) differ."""
    top = [k for k in ("output_kind", "channels", "tta") if a.get(k) != b.get(k)]
    inner = _differing_keys(a.get("identity", {}), b.get("identity", {}))
    return top + [f"identity.{k}" for k in inner]


def case_key(spec: CacheSpec, members: Sequence[str], input_sha256: Mapping[str, str]) -> str:
    """The key of one case: it changes whenever anything that changes the cached content changes.

    ``canonical_hash`` of the spec's identity hash (teacher identity, mode, preprocessing,
    quantisation, format version), the members that predicted this case (all of them in full
    mode, the out-of-fold ones in oof mode) and the sha256 of each input file (name -> hash).
    """
    return canonical_hash({"spec": spec.identity_hash, "members": list(members), "inputs": dict(input_sha256)})
