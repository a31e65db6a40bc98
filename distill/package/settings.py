"""Settings a model package carries for the code that runs it (stored in its manifest).

They live with the package format, not with the code that applies them, so export can write
them and inference read them without either importing the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from distill.data.conventions import REGIONS

# Neighbourhood size -> scipy's structuring-element rank in 3D (faces, +edges, +corners).
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}
SIZE_UNITS = ("voxels", "ml")


@dataclass(frozen=True)
class PostprocessConfig:
    """Which clean-up steps to run.

    Attributes:
        enforce_hierarchy: clip TC to WT and ET to TC (after component filtering).
        min_size: region name -> minimum component size; regions not named are not filtered.
        min_size_unit: ``"voxels"`` or ``"ml"`` (needs the voxel spacing).
        keep_largest: regions reduced to their largest component.
        connectivity: 6, 18 or 26, for every component operation.

    A region may be both size-filtered and reduced to its largest component; the size
    filter then also drops the largest component when it is under the minimum.
    """

    enforce_hierarchy: bool = False
    min_size: Mapping[str, float] = field(default_factory=dict)
    min_size_unit: str = "voxels"
    keep_largest: tuple[str, ...] = ()
    connectivity: int = 26

    def __post_init__(self) -> None:
        # Accept any iterable of region names; store a tuple so the frozen config stays immutable there.
        object.__setattr__(self, "keep_largest", tuple(self.keep_largest))
        unknown = sorted({*self.min_size, *self.keep_largest} - set(REGIONS))
        if unknown:
            raise ValueError(f"unknown region(s) {unknown}; expected names from {REGIONS}")
        if self.min_size_unit not in SIZE_UNITS:
            raise ValueError(f"min_size_unit must be one of {SIZE_UNITS}, got {self.min_size_unit!r}")
        negative = {r: v for r, v in self.min_size.items() if not v >= 0}
        if negative:
            raise ValueError(f"minimum component sizes must be >= 0, got {negative}")
        if self.connectivity not in _CONNECTIVITY_RANK:
            raise ValueError(f"connectivity must be one of {sorted(_CONNECTIVITY_RANK)}, got {self.connectivity}")

    @property
    def is_noop(self) -> bool:
        return not (self.enforce_hierarchy or self.min_size or self.keep_largest)
