"""Settings a model package carries for the code that runs it (stored in its manifest).

They live with the package format, not with the code that applies them, so export can write
them and inference read them without either importing the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class InferenceSettings:
    """How the predictor runs the network over a preprocessed volume.

    Attributes:
        whole_volume_max_voxels: volumes up to this many voxels run in one pass; larger ones
            are tiled (a whole padded 1 mm BraTS volume, 240x240x160, is ~9.2 M voxels).
        tile: sliding-window tile ``(X, Y, Z)``, multiples of the network divisor.
        overlap: fraction of a tile shared with its neighbour.
        profile_min, profile_opt, profile_max: TensorRT optimisation profile, full input
            shapes ``(B, C, X, Y, Z)``; the engine accepts every shape between min and max.
    """

    whole_volume_max_voxels: int
    tile: tuple[int, int, int]
    overlap: float
    profile_min: tuple[int, ...]
    profile_opt: tuple[int, ...]
    profile_max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "whole_volume_max_voxels": self.whole_volume_max_voxels,
            "tile": list(self.tile),
            "overlap": self.overlap,
            "tensorrt_profile": {
                "min": list(self.profile_min),
                "opt": list(self.profile_opt),
                "max": list(self.profile_max),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceSettings:
        profile = data["tensorrt_profile"]
        return cls(
            whole_volume_max_voxels=int(data["whole_volume_max_voxels"]),
            tile=tuple(int(n) for n in data["tile"]),  # type: ignore[arg-type]
            overlap=float(data["overlap"]),
            profile_min=tuple(int(n) for n in profile["min"]),
            profile_opt=tuple(int(n) for n in profile["opt"]),
            profile_max=tuple(int(n) for n in profile["max"]),
        )


def default_inference_settings(
    in_channels: int, divisor: int, max_edge: int = 256, tile_edge: int = 128
) -> InferenceSettings:
    """Whole volumes up to ``max_edge``³ voxels, ``tile_edge``³ tiles, and a profile from 2 divisors to ``max_edge``.

    The profile's opt shape is a padded, brain-cropped 1 mm BraTS volume (~160x192x160 after
    the brain crop), the shape the engine will see most.
    """

    def up(n: int) -> int:
        return int(math.ceil(n / divisor) * divisor)

    tile = (up(tile_edge),) * 3
    return InferenceSettings(
        whole_volume_max_voxels=max_edge**3,
        tile=tile,  # type: ignore[arg-type]
        overlap=0.5,
        profile_min=(1, in_channels, *(up(2 * divisor),) * 3),
        profile_opt=(1, in_channels, up(160), up(192), up(160)),
        profile_max=(1, in_channels, *(up(max_edge),) * 3),
    )
