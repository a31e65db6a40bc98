"""The one small interface every teacher member and ensemble implements.

A teacher takes a loaded case (original grid, Distill's channel order) and returns soft maps
on that same grid, so members with different preprocessing (nnU-Net's own, MONAI's) can be
averaged voxel by voxel, and the cache can then put everything on the grid students train on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from distill.core.hashing import canonical_hash, file_sha256  # noqa: F401 (re-exported for teachers)
from distill.core.outputs import OUTPUT_KINDS, SIGMOID, SOFTMAX  # noqa: F401
from distill.data.case import Case


@dataclass(frozen=True)
class TeacherInfo:
    """What a teacher is, enough to tell two teachers apart and to size a student from it.

    Attributes:
        name: human-readable, e.g. ``"nnunet:Dataset137_BraTS2021/nnUNetTrainer__nnUNetPlans__3d_fullres"``.
        output_kind: ``"sigmoid"`` (nested regions) or ``"softmax"`` (exclusive labels).
        channels: channel names in output order, e.g. ``("WT", "TC", "ET")``.
        parameters_per_member: parameter count of ONE member network (what ``--ratio`` refers to).
        members: member names (e.g. folds ``("fold_0", ...)``).
        tta: test-time augmentation, ``"mirror8"`` or ``"none"``.
        preprocessing: what the member expects (spacing, normalisation, patch size ...).
        identity: hashes and settings that define the teacher's predictions.
    """

    name: str
    output_kind: str
    channels: tuple[str, ...]
    parameters_per_member: int
    members: tuple[str, ...]
    tta: str
    preprocessing: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def identity_hash(self) -> str:
        """Stable hash of everything that changes the predictions."""
        return canonical_hash(
            {"output_kind": self.output_kind, "channels": self.channels, "tta": self.tta, **self.identity}
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "channels": list(self.channels),
            "members": list(self.members),
            "identity_hash": self.identity_hash,
        }


@dataclass
class SoftPrediction:
    """A teacher's soft output for one case, on the case's original grid.

    Attributes:
        probabilities: float32 ``(K, X, Y, Z)``: sigmoid per region, or softmax over labels.
        uncertainty: float32 ``(K, X, Y, Z)``: standard deviation of the per-pass probabilities
            over every forward pass that went into the mean (TTA flips x members).
        n_passes: how many forward passes were averaged (e.g. 5 folds x 8 flips = 40).
    """

    probabilities: np.ndarray
    uncertainty: np.ndarray
    n_passes: int


class Teacher(Protocol):
    """A model (or ensemble) that produces soft maps for a case."""

    @property
    def info(self) -> TeacherInfo: ...

    def predict(self, case: Case, members: Sequence[str] | None = None) -> SoftPrediction:
        """Soft maps for ``case``; ``members`` restricts to a subset (out-of-fold mode)."""
        ...


class PassAccumulator:
    """Running mean and standard deviation of probabilities over forward passes.

    Sums are kept in float64 so 40 passes of float32 maps lose nothing; only two arrays of
    the map's size are held, whatever the number of passes.
    """

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.total_sq: np.ndarray | None = None
        self.count = 0

    def add(self, probabilities: np.ndarray, weight: float = 1.0) -> None:
        p = np.asarray(probabilities, dtype=np.float64)
        if self.total is None:
            self.total, self.total_sq = np.zeros_like(p), np.zeros_like(p)
        self.total += weight * p
        self.total_sq += weight * p * p
        self.count += weight

    def mean(self) -> np.ndarray:
        return (self.total / self.count).astype(np.float32)

    def std(self) -> np.ndarray:
        mean = self.total / self.count
        return np.sqrt(np.maximum(self.total_sq / self.count - mean * mean, 0.0)).astype(np.float32)
