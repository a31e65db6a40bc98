"""How cached arrays are quantised: :class:`Quantiser` and its error bounds.

Quantisation (measured by ``benchmarks/teacher_cache/bench_cache_format.py`` on 3 BraTS 2018
cases with simulated 8-pass sigmoid ensembles; see ``RESULTS_format.md`` there): probabilities
are stored as uint8 ``q = round(255 p)``, max abs error 1/510 = 0.00196 (measured 0.00196;
mean 0.0003-0.001), which is 221x (1 mm) / 171x (2 mm) fewer bytes than nnU-Net's float32
``savez_compressed`` on the same grid for a confident teacher (background p ~ 3e-4), but only
27x / 17x for a hesitant one (background p ~ 7e-3, whose noise no lossless coder removes;
against nnU-Net's npz on the full original image it is 28x / 133x). float16 is more exact
(max 0.00024) but only 2x smaller than the npz, because near-zero float16 values keep noisy
mantissas; uint8 ``q / 128`` (error 1/256) would give 34x / 20x for the hesitant teacher and
is available through ``CacheSpec.quantisation`` if real teachers turn out that way. The
uncertainty (a standard deviation, so in [0, 0.5]) is uint8 ``q = round(510 s)``, max abs
error 1/1020. Student inputs (z-scores) stay float16 (relative error 2**-11) and are most of
a case's bytes (about 7 MiB of 7.4 at 1 mm). Decoded values are float32, so each bound holds
up to float32 rounding (~1e-7). The scheme and its bounds are in ``spec.json``; the measured
max/mean abs errors are in every entry and summarised in the manifest. A random 64³ patch of
every array reads in 40-60 ms at 1 mm, the whole case in 220-350 ms (2 busy shared cores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.cache.format import IMAGES, PROBABILITIES, RANGE_SLACK, UNCERTAINTY, CacheError


@dataclass(frozen=True)
class Quantiser:
    """How one array is stored.

    Attributes:
        dtype: ``"uint8"`` (linear, ``value = q / divisor``) or ``"float16"``.
        divisor: uint8 only; ``divisor * upper`` must not exceed 255.
        upper: values lie in ``[0, upper]`` (required for uint8; optional for float16,
            where it only serves to state an absolute error bound). ``0`` means unbounded.
    """

    dtype: str
    divisor: int = 0
    upper: float = 0.0

    def __post_init__(self) -> None:
        if self.dtype == "uint8":
            if self.divisor < 1 or self.upper <= 0 or self.divisor * self.upper > 255 + 1e-9:
                raise ValueError(f"uint8 quantiser needs divisor >= 1 and 0 < divisor * upper <= 255, got {self}")
        elif self.dtype != "float16":
            raise ValueError(f"unknown quantisation dtype {self.dtype!r} (known: uint8, float16)")

    @property
    def max_abs_error_bound(self) -> float | None:
        """Worst-case absolute error for values in ``[0, upper]``; ``None`` when unbounded (relative 2**-11)."""
        if self.dtype == "uint8":
            return 0.5 / self.divisor
        if self.upper > 0:
            # Half the float16 spacing in the binade just below ``upper``.
            return 2.0 ** (math.ceil(math.log2(self.upper)) - 1 - 11)
        return None

    def encode(self, values: np.ndarray, what: str) -> np.ndarray:
        """float array -> stored array (uint8 or float16); raises :class:`CacheError` naming ``what``."""
        values = np.asarray(values, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise CacheError(f"{what}: contains NaN or Inf")
        if self.upper > 0:
            low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
            if low < -RANGE_SLACK or high > self.upper + RANGE_SLACK:
                raise CacheError(f"{what}: values span [{low:.4g}, {high:.4g}], expected [0, {self.upper:g}]")
            values = np.clip(values, 0.0, self.upper)
        if self.dtype == "uint8":
            return np.rint(values * np.float32(self.divisor)).astype(np.uint8)
        stored = values.astype(np.float16)
        if not np.all(np.isfinite(stored)):
            raise CacheError(f"{what}: values beyond float16 range (|x| > 65504)")
        return stored

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Stored array -> float32 of the same shape."""
        values = stored.astype(np.float32)
        if self.dtype == "uint8":
            values /= np.float32(self.divisor)  # in place: patches are decoded in a training loop
        return values

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dtype": self.dtype}
        if self.dtype == "uint8":
            out["divisor"] = self.divisor
        if self.upper > 0:
            out["upper"] = self.upper
        out["max_abs_error_bound"] = self.max_abs_error_bound
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quantiser:
        return cls(dtype=str(data["dtype"]), divisor=int(data.get("divisor", 0)), upper=float(data.get("upper", 0.0)))


def default_quantisation() -> dict[str, Any]:
    """uint8 probabilities (error <= 1/510) and uncertainty (<= 1/1020), float16 images."""
    return {
        IMAGES: Quantiser("float16").to_dict(),
        PROBABILITIES: Quantiser("uint8", divisor=255, upper=1.0).to_dict(),
        UNCERTAINTY: Quantiser("uint8", divisor=510, upper=0.5).to_dict(),
    }


def measure_error(original: np.ndarray, restored: np.ndarray) -> dict[str, float]:
    """Max and mean absolute difference over every voxel of two float arrays of one shape.

    Works one channel at a time in float32 (ample for errors near 1e-3) and sums in float64,
    so a 1 mm case needs no float64 copies of its four image channels.
    """
    original, restored = np.asarray(original, dtype=np.float32), np.asarray(restored, dtype=np.float32)
    if original.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0}
    worst, total = 0.0, 0.0
    for a, b in zip(original.reshape(original.shape[0], -1), restored.reshape(restored.shape[0], -1)):
        diff = np.abs(b - a)
        worst = max(worst, float(diff.max()))
        total += float(diff.sum(dtype=np.float64))
    return {"max_abs": worst, "mean_abs": total / original.size}
