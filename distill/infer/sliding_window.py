"""Whole-volume or sliding-window inference of a dense 3D network, in one place.

Training validation, the predictor and the benchmarks all call :func:`predict_logits`, so a
volume is tiled the same way everywhere. Tiles overlap by ``overlap`` of the tile size and
their logits are averaged with a separable cosine ("Hann") window that favours tile centres,
where a network sees the most context.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch

from distill.errors import DistillError


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def _window(tile: tuple[int, int, int], device, dtype) -> torch.Tensor:
    axes = [torch.from_numpy(np.hanning(n + 2)[1:-1].astype(np.float32)) for n in tile]
    window = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return window.clamp_min(1e-3).to(device=device, dtype=dtype)


@torch.inference_mode()
def predict_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    tile: tuple[int, int, int] | None = None,
    overlap: float = 0.5,
) -> torch.Tensor:
    """Logits ``(B, K, *S)`` for images ``(B, C, *S)``.

    Args:
        model: maps ``(B, C, *s)`` to ``(B, K, *s)`` for any ``s`` (Distill students pad internally).
        images: input volume(s).
        tile: tile size; ``None`` (or a tile covering the volume) runs the whole volume at once.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
    """
    spatial = tuple(images.shape[2:])
    if tile is None or all(t >= s for t, s in zip(tile, spatial)):
        return model(images)
    tile = tuple(min(t, s) for t, s in zip(tile, spatial))
    steps = [max(1, int(round(t * (1.0 - overlap)))) for t in tile]
    output = None
    weight = torch.zeros(spatial, device=images.device, dtype=torch.float32)
    window = _window(tile, images.device, torch.float32)
    for x in _starts(spatial[0], tile[0], steps[0]):
        for y in _starts(spatial[1], tile[1], steps[1]):
            for z in _starts(spatial[2], tile[2], steps[2]):
                box = (slice(x, x + tile[0]), slice(y, y + tile[1]), slice(z, z + tile[2]))
                logits = model(images[(slice(None), slice(None), *box)]).float()
                if output is None:
                    output = torch.zeros((images.shape[0], logits.shape[1], *spatial), device=images.device)
                output[(slice(None), slice(None), *box)] += logits * window
                weight[box] += window
    return output / weight


#: Test-time augmentation: the sets of spatial axes (0 = X, 1 = Y, 2 = Z) to mirror the input
#: along, one network pass per set. ``mirror8`` is nnU-Net's default: every subset of the three
#: axes, 8 passes.
TTA_MIRRORS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "mirror8": tuple(axes for n in range(4) for axes in itertools.combinations(range(3), n)),
}


def check_tta(tta: str) -> None:
    """:class:`~distill.errors.DistillError` (one line) unless ``tta`` names a :data:`TTA_MIRRORS` entry."""
    if tta not in TTA_MIRRORS:
        raise DistillError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_MIRRORS)}")


@torch.inference_mode()
def mirrored_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    tile: tuple[int, int, int] | None = None,
    overlap: float = 0.5,
    tta: str = "none",
) -> torch.Tensor:
    """:func:`predict_logits` averaged over the mirrorings of ``tta`` (:data:`TTA_MIRRORS`).

    Each pass sees the input flipped along a set of spatial axes and its output is flipped back
    before averaging; as nnU-Net does, the logits are averaged (the sigmoid comes after). Shapes
    as :func:`predict_logits`: ``(B, C, *S)`` in, ``(B, K, *S)`` out.
    """
    check_tta(tta)
    total = None
    for axes in TTA_MIRRORS[tta]:
        dims = [2 + axis for axis in axes]  # past the batch and channel dimensions
        flipped = torch.flip(images, dims) if dims else images
        logits = predict_logits(model, flipped, tile, overlap).float()
        logits = torch.flip(logits, dims) if dims else logits
        total = logits if total is None else total + logits
    return total / len(TTA_MIRRORS[tta])
