"""Preprocessing of one case and its exact geometric inverse, in one place.

Forward, in this order (the order nnU-Net uses for crop, normalise, resample):

1. crop to the bounding box of the brain (voxels non-zero in any modality);
2. z-score each modality inside the brain mask, zero outside;
3. optionally resample to a target spacing (linear for images, one-hot + argmax for labels);
4. pad with zeros to a multiple of the network's divisor (split evenly before and after).

Everything needed to undo it is kept in a :class:`PreprocessRecord` (JSON-serialisable), and
:func:`restore_labels` / :func:`restore_probabilities` put a prediction made on the
preprocessed grid back on the original grid. Cropping and padding invert exactly; resampling
inverts to the exact original shape and geometry (values are interpolated, of course).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage

from distill.data.nifti import voxel_spacing
from distill.errors import DataError

Bbox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
Pad = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class PreprocessConfig:
    """How to preprocess.

    Attributes:
        target_spacing: resample to this spacing in mm (``None`` keeps the original grid).
        divisor: pad every spatial size up to a multiple of this (the network's total stride).
        image_order: spline order for image resampling (1 = linear; nnU-Net uses 3).
    """

    target_spacing: tuple[float, float, float] | None = None
    divisor: int = 1
    image_order: int = 1

    def __post_init__(self) -> None:
        if self.divisor < 1:
            raise ValueError(f"divisor must be >= 1, got {self.divisor}")
        if self.target_spacing is not None and (len(self.target_spacing) != 3 or min(self.target_spacing) <= 0):
            raise ValueError(f"target_spacing must be three positive numbers, got {self.target_spacing}")


@dataclass(frozen=True)
class PreprocessRecord:
    """What :func:`preprocess` did to one case, enough to undo it."""

    original_shape: tuple[int, int, int]
    original_affine: tuple[tuple[float, ...], ...]
    bbox: Bbox
    resampled_shape: tuple[int, int, int]
    pad: Pad

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        return tuple(stop - start for start, stop in self.bbox)  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the preprocessed grid."""
        return tuple(n + a + b for n, (a, b) in zip(self.resampled_shape, self.pad))  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return voxel_spacing(self.affine)

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine of the preprocessed grid."""
        cropped = np.asarray(self.original_affine, dtype=np.float64) @ _translation([start for start, _ in self.bbox])
        resampled = resampled_affine(cropped, self.cropped_shape, self.resampled_shape)
        return resampled @ _translation([-before for before, _ in self.pad])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessRecord:
        def triple(x):  # JSON turns tuples into lists
            return tuple(tuple(int(v) for v in pair) for pair in x)

        return cls(
            original_shape=tuple(int(v) for v in data["original_shape"]),  # type: ignore[arg-type]
            original_affine=tuple(tuple(float(v) for v in row) for row in data["original_affine"]),
            bbox=triple(data["bbox"]),  # type: ignore[arg-type]
            resampled_shape=tuple(int(v) for v in data["resampled_shape"]),  # type: ignore[arg-type]
            pad=triple(data["pad"]),  # type: ignore[arg-type]
        )


@dataclass
class PreprocessedCase:
    """Arrays on the preprocessed grid.

    Attributes:
        images: float32 ``(C, *record.shape)``, z-scored, zero outside the brain.
        labels: uint8 ``record.shape`` or ``None``.
        brain_mask: bool ``record.shape``.
        record: how to go back.
    """

    images: np.ndarray
    labels: np.ndarray | None
    brain_mask: np.ndarray
    record: PreprocessRecord


def _translation(offset) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def brain_mask(images: np.ndarray) -> np.ndarray:
    """Voxels non-zero in any channel; ``images`` is ``(C, X, Y, Z)``."""
    return np.any(images != 0, axis=0)


def bounding_box(mask: np.ndarray, source: str = "case") -> Bbox:
    """Half-open (start, stop) per axis of the non-zero voxels of ``mask``."""
    if not mask.any():
        raise DataError(f"{source}: empty brain mask (every voxel is zero in every modality)")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def crop(array: np.ndarray, bbox: Bbox) -> np.ndarray:
    """Crop the last three axes of ``array`` to ``bbox``."""
    return array[(..., *(slice(a, b) for a, b in bbox))]


def masked_mean_std(images: np.ndarray, mask: np.ndarray, zero_outside: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (float64, std floored at 1e-8) over ``mask``.

    Sums run over the zero-filled array, so the masked voxels are never gathered into a copy
    (that copy cost as much as everything else in preprocessing); ``zero_outside=True`` says
    ``images`` are already zero outside ``mask`` (skips the fill). Each line along the last axis
    is summed in float32 (pairwise, a few hundred values) and the line sums in float64: as
    accurate as a float64 sum to ~1e-7 relative, and 3x faster than casting every voxel.
    """
    count = max(int(np.count_nonzero(mask)), 1)
    means, stds = np.zeros(images.shape[0]), np.ones(images.shape[0])
    for c in range(images.shape[0]):
        kept = images[c] if zero_outside else np.where(mask, images[c], np.float32(0))
        means[c] = kept.sum(axis=-1).sum(dtype=np.float64) / count
        squares = np.einsum("...k,...k->...", kept, kept).sum(dtype=np.float64)
        variance = float(squares) / count - means[c] ** 2
        stds[c] = max(max(variance, 0.0) ** 0.5, 1e-8)
    return means, stds


def zscore_in_mask(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per channel ``(x - mean) / std`` over the masked voxels; zero outside the mask."""
    means, stds = masked_mean_std(images, mask)
    out = np.zeros(images.shape, dtype=np.float32)
    for c in range(images.shape[0]):
        np.multiply((images[c] - np.float32(means[c])) / np.float32(stds[c]), mask, out=out[c], casting="unsafe")
    return out


def resampled_shape(shape, spacing, target_spacing) -> tuple[int, int, int]:
    """Grid size that covers the same extent at ``target_spacing``."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))  # type: ignore[return-value]


def resampled_affine(affine: np.ndarray, old_shape, new_shape) -> np.ndarray:
    """Affine of a grid resampled from ``old_shape`` to ``new_shape`` over the same extent.

    Grid-aligned resampling (what :func:`resample` does) puts new voxel ``i`` at old voxel
    coordinate ``(i + 0.5) * old / new - 0.5``, so voxel edges, not centres, stay fixed.
    """
    ratio = np.array(old_shape, dtype=np.float64) / np.array(new_shape, dtype=np.float64)
    scale = np.diag([*ratio, 1.0])
    scale[:3, 3] = 0.5 * ratio - 0.5
    return np.asarray(affine, dtype=np.float64) @ scale


def resample(array: np.ndarray, shape: tuple[int, int, int], order: int = 1) -> np.ndarray:
    """Resample the last three axes of ``array`` to ``shape``, grid-aligned (voxel edges match)."""
    if tuple(array.shape[-3:]) == tuple(shape):
        return array
    lead = array.shape[:-3]
    flat = array.reshape((-1, *array.shape[-3:]))
    if order == 1:
        return _resample_linear(flat, shape).reshape((*lead, *shape))
    factors = [n / o for n, o in zip(shape, array.shape[-3:])]
    out = np.empty((flat.shape[0], *shape), dtype=np.float32)
    for i, channel in enumerate(flat):
        result = ndimage.zoom(
            channel.astype(np.float32), factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1
        )
        if result.shape != tuple(shape):  # zoom rounds its output shape; guard the rare off-by-one
            raise AssertionError(f"resample produced {result.shape}, wanted {shape}")
        out[i] = result
    return out.reshape((*lead, *shape))


def _resample_linear(flat: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Grid-aligned trilinear resampling of ``(K, X, Y, Z)``; the same sampling positions and edge
    handling as ``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")`` (equal to float32
    rounding), but multi-threaded, which matters because resampling dominates a tiny student's
    per-case time (``benchmarks/latency/preprocessing_change.md``)."""
    volume = torch.from_numpy(np.asarray(flat, dtype=np.float32))[None]  # strided views are fine
    with torch.no_grad():
        resampled = torch.nn.functional.interpolate(
            volume, size=tuple(int(n) for n in shape), mode="trilinear", align_corners=False
        )
    return resampled[0].numpy()


def resample_labels(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resample a label map by linear interpolation of each label's one-hot mask, then argmax."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    values = np.unique(labels)
    onehot = np.stack([(labels == v).astype(np.float32) for v in values])
    winner = np.argmax(resample(onehot, shape, order=1), axis=0)
    return values[winner].astype(labels.dtype)


def zscore_then_resample_linear(images: np.ndarray, mask: np.ndarray, mask_weight: np.ndarray) -> np.ndarray:
    """``resample(zscore_in_mask(images, mask), order=1)`` computed on the resampled grid.

    The caller's ``mask`` must be every voxel non-zero in some channel (:func:`brain_mask`), so
    ``images == images * mask``, and
    z-scoring inside it is ``(x - mean * mask) / std``. Linear resampling is linear and keeps
    constants, so the resampled result is ``(resample(x) - mean * resample(mask)) / std``, where
    ``mask_weight = resample(mask)``. Only the statistics touch the original grid: at 1 mm -> 2 mm
    that is 8x fewer voxels to normalise, the bulk of a tiny student's per-case time.
    """
    means, stds = masked_mean_std(images, mask, zero_outside=True)
    resampled = resample(images, mask_weight.shape, order=1)
    if np.shares_memory(resampled, images):  # same grid: resample returned its input
        resampled = resampled.astype(np.float32, copy=True)
    for c in range(resampled.shape[0]):
        resampled[c] = (resampled[c] - np.float32(means[c]) * mask_weight) / np.float32(stds[c])
    return resampled


def padding_for(shape, divisor: int) -> Pad:
    """(before, after) per axis that brings each size up to a multiple of ``divisor``."""
    pads = []
    for n in shape:
        extra = (-n) % divisor
        pads.append((extra // 2, extra - extra // 2))
    return tuple(pads)  # type: ignore[return-value]


def pad(array: np.ndarray, pads: Pad) -> np.ndarray:
    return np.pad(array, [(0, 0)] * (array.ndim - 3) + list(pads))


def unpad(array: np.ndarray, pads: Pad) -> np.ndarray:
    return array[(..., *(slice(a, array.shape[-3 + i] - b) for i, (a, b) in enumerate(pads)))]


def preprocess(
    images: np.ndarray,
    affine: np.ndarray,
    labels: np.ndarray | None = None,
    config: PreprocessConfig = PreprocessConfig(),
    source: str = "case",
) -> PreprocessedCase:
    """Crop, normalise, resample and pad one case.

    Args:
        images: ``(C, X, Y, Z)`` raw intensities.
        affine: 4x4 voxel-to-world matrix of the original grid.
        labels: optional ``(X, Y, Z)`` label map on the same grid.
        config: target spacing, divisor and interpolation order.
        source: name used in error messages.
    """
    if images.ndim != 4:
        raise DataError(f"{source}: expected images of shape (C, X, Y, Z), got {images.shape}")
    if not np.all(np.isfinite(images)):
        raise DataError(f"{source}: images contain NaN or Inf")
    mask = brain_mask(images)
    bbox = bounding_box(mask, source)
    cropped_mask = crop(mask, bbox)
    cropped = crop(images, bbox)
    cropped_labels = crop(labels, bbox) if labels is not None else None

    new_shape = tuple(cropped.shape[1:])
    if config.target_spacing is not None:
        new_shape = resampled_shape(new_shape, voxel_spacing(affine), config.target_spacing)
    mask_weight = resample(cropped_mask.astype(np.float32), new_shape, order=1)
    if config.image_order == 1:
        resampled = zscore_then_resample_linear(cropped, cropped_mask, mask_weight)
    else:
        resampled = resample(zscore_in_mask(cropped, cropped_mask), new_shape, order=config.image_order)
    resampled_mask = mask_weight >= 0.5
    resampled *= resampled_mask  # keep "outside the brain" exactly zero after interpolation
    resampled_labels = resample_labels(cropped_labels, new_shape) if cropped_labels is not None else None

    pads = padding_for(new_shape, config.divisor)
    record = PreprocessRecord(
        original_shape=tuple(int(n) for n in images.shape[1:]),  # type: ignore[arg-type]
        original_affine=tuple(tuple(float(v) for v in row) for row in np.asarray(affine, dtype=np.float64)),
        bbox=bbox,
        resampled_shape=tuple(int(n) for n in new_shape),  # type: ignore[arg-type]
        pad=pads,
    )
    return PreprocessedCase(
        images=pad(resampled, pads).astype(np.float32, copy=False),
        labels=pad(resampled_labels, pads) if resampled_labels is not None else None,
        brain_mask=pad(resampled_mask, pads),
        record=record,
    )


def to_preprocessed_grid(maps: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Soft maps ``(K, *original_shape)`` -> ``(K, *record.shape)``: the same crop, resampling
    (linear) and padding the images went through, so teacher maps line up with student inputs.
    """
    if tuple(maps.shape[-3:]) != tuple(record.original_shape):
        raise ValueError(f"maps have spatial shape {maps.shape[-3:]}, the original grid is {record.original_shape}")
    cropped = crop(maps, record.bbox).astype(np.float32)
    return pad(resample(cropped, record.resampled_shape, order=1), record.pad)


def _check_grid(array: np.ndarray, record: PreprocessRecord) -> None:
    if tuple(array.shape[-3:]) != record.shape:
        raise ValueError(f"prediction has spatial shape {array.shape[-3:]}, the preprocessed grid is {record.shape}")


def restore_labels(labels: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Label map on the preprocessed grid -> label map on the original grid (zero outside the crop)."""
    _check_grid(labels, record)
    cropped = resample_labels(unpad(labels, record.pad), record.cropped_shape)
    out = np.zeros(record.original_shape, dtype=labels.dtype)
    out[tuple(slice(a, b) for a, b in record.bbox)] = cropped
    return out


def restore_probabilities_in_crop(probabilities: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """``(K, *record.shape)`` soft maps -> ``(K, *record.cropped_shape)`` float32: padding removed and
    resampled back, still inside the brain's bounding box (:func:`uncrop` places them)."""
    _check_grid(probabilities, record)
    cropped = resample(unpad(probabilities, record.pad).astype(np.float32, copy=False), record.cropped_shape, order=1)
    return cropped.copy() if np.shares_memory(cropped, probabilities) else cropped


def linear_sources(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid-aligned linear resampling of one axis from ``n_in`` to ``n_out`` samples, as
    :func:`resample` does it: each output's lower and upper source index and the upper one's
    weight (source coordinate ``(i + 0.5) * n_in / n_out - 0.5``, clamped at both edges).
    Positions are computed in float64: this path stays within ~2e-7 of a float64 evaluation,
    torch's trilinear interpolation within a few 1e-6 on a 150-voxel axis (random maps), so the
    two agree to that, not bit for bit."""
    position = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lower = np.minimum(np.floor(position).astype(np.intp), n_in - 1)
    upper = np.minimum(lower + 1, n_in - 1)
    return lower, upper, np.clip(position - lower, 0.0, 1.0).astype(np.float32)


def _resample_linear_box(coarse: np.ndarray, sources: list, box: Bbox) -> np.ndarray:
    """Linear resampling of ``coarse (K, *s)`` evaluated only at the output voxels in ``box``,
    one axis at a time (the last axis first), reading only the source
    lines those voxels need."""
    out = coarse
    for axis in (3, 2, 1):
        (start, stop), (lower, upper, weight) = box[axis - 1], sources[axis - 1]
        lower, upper, weight = lower[start:stop], upper[start:stop], weight[start:stop]
        shape = [1] * out.ndim
        shape[axis] = -1
        weight = weight.reshape(shape)
        out = np.take(out, lower, axis=axis) * (np.float32(1) - weight) + np.take(out, upper, axis=axis) * weight
    return out


def restore_thresholded(
    probabilities: np.ndarray, record: PreprocessRecord, thresholds: np.ndarray
) -> tuple[np.ndarray, Bbox]:
    """``restore_probabilities(probabilities, record) > thresholds`` without resampling voxels that
    cannot cross a threshold.

    Linear resampling makes every output a convex combination of its (up to 8) source voxels,
    so an output can exceed a threshold only where one of its sources does. Only the box of
    outputs whose sources touch an above-threshold voxel is resampled; everything else is
    below threshold. The tumour's box is usually a small part of the brain's.

    Args:
        probabilities: ``(K, *record.shape)`` soft maps on the preprocessed grid.
        record: how the case was preprocessed.
        thresholds: ``(K,)`` per-channel thresholds (a map is above where it is ``>`` its threshold).

    Returns:
        Boolean ``(K, *box shape)`` and the box (half-open, original-grid coordinates) it covers;
        every voxel outside the box is below threshold in every channel. An empty box (every
        size 0) when nothing is above threshold anywhere.
    """
    _check_grid(probabilities, record)
    coarse = unpad(probabilities, record.pad).astype(np.float32, copy=False)
    limits = np.asarray(thresholds, dtype=np.float32).reshape(-1, 1, 1, 1)
    above = np.any(coarse > limits, axis=0)
    origin = [start for start, _ in record.bbox]
    if not above.any():
        return np.zeros((coarse.shape[0], 0, 0, 0), dtype=bool), tuple((o, o) for o in origin)  # type: ignore[return-value]
    sources = [linear_sources(n_out, n_in) for n_out, n_in in zip(record.cropped_shape, coarse.shape[1:])]
    hot = bounding_box(above)
    box = []
    for (first, stop), (lower, upper, _) in zip(hot, sources):
        touching = np.flatnonzero((upper >= first) & (lower < stop))
        box.append((int(touching[0]), int(touching[-1]) + 1))
    regions = _resample_linear_box(coarse, sources, tuple(box)) > limits  # type: ignore[arg-type]
    return regions, tuple((o + a, o + b) for o, (a, b) in zip(origin, box))  # type: ignore[return-value]


def place(array: np.ndarray, box: Bbox, shape: tuple[int, int, int]) -> np.ndarray:
    """``(..., *box shape)`` -> ``(..., *shape)`` with ``array`` at ``box`` and zero elsewhere."""
    out = np.zeros((*array.shape[:-3], *shape), dtype=array.dtype)
    out[(..., *(slice(a, b) for a, b in box))] = array
    return out


def uncrop(array: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """``(..., *record.cropped_shape)`` -> ``(..., *record.original_shape)``, zero outside the crop."""
    return place(array, record.bbox, record.original_shape)


def restore_probabilities(probabilities: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """``(K, *record.shape)`` soft maps -> ``(K, *original_shape)`` float32, zero outside the crop.

    Zero is the right fill for sigmoid region maps (no tumour outside the brain); a softmax
    caller should set its background channel to 1 there.
    """
    return uncrop(restore_probabilities_in_crop(probabilities, record), record)
