"""Boundary loss, after Kervadec et al., "Boundary loss for highly unbalanced segmentation",
Medical Image Analysis 67, 2021 (MIDL 2019).

The loss integrates the predicted foreground probability against the signed distance map
of the ground-truth region, so mass predicted far outside the region costs in proportion
to its distance, and mass inside earns a reward::

    loss = mean over batch, regions and voxels of  phi_G(x) * sigmoid(z(x))

Signed distance map implemented (:func:`signed_distance_maps`), per sample and region,
with Euclidean distances between voxel centres in physical units (``spacing``, e.g. mm)::

    phi_G(x) = +dist(x, G)          for x outside G   (distance to the nearest voxel of G)
    phi_G(x) = -dist(x, not G)      for x inside G    (distance to the nearest voxel outside)

computed on the CPU with ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``.
Kervadec et al.'s code subtracts 1 inside (``-(dist - 1)``), which makes inner boundary
voxels 0; that offset is in voxels and does not carry to anisotropic spacing, so here the
map is symmetric: the nearest voxels on either side of the contour get ``-/+`` one
spacing step. With these signs the loss is lowest for the prediction equal to the ground
truth: negative (a reward) for probability inside, positive outside.

Empty region (or a region filling the whole patch): the distance to the missing side is
undefined, and the map is all zeros, as in the authors' code; that sample and region then
adds nothing (the Dice/BCE terms handle empty regions).

Scale: values are distances in the units of ``spacing``, so the loss is not bounded like
Dice and grows with the size of the structures; give the term a small weight.

Ramp it in late (the literature's advice): the boundary loss alone gives no useful
gradient to an untrained network (an all-background prediction already scores 0) and
is meant to complement a regional loss. Kervadec et al. start with the regional loss
alone and shift weight to the boundary term over training (in their experiments the
boundary share grows by 0.01 per epoch). In Distill: a ``ramp_in`` schedule in
:mod:`distill.losses.composite`, starting after the Dice/KD terms have converged for a
while (e.g. a third of training), with the Dice term kept on.

Distance maps are best computed in the data loader (CPU workers) and passed in as a tensor
(:func:`boundary_loss`); :func:`boundary_loss_from_regions` computes them on the fly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from distill.losses._tensors import check_channels_first, check_same_shape, voxel_weight_like, weighted_voxel_mean


def signed_distance_map(region: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Signed distance map (float32, same shape) of one binary region; see the module docstring.

    Args:
        region: a boolean (or 0/1) array of any dimension.
        spacing: voxel size per axis (default 1 per axis).

    Returns:
        ``+dist`` outside, ``-dist`` inside, zeros if the region is empty or full.
    """
    inside = np.asarray(region).astype(bool)
    if spacing is not None and len(spacing) != inside.ndim:
        raise ValueError(f"spacing has {len(spacing)} values but the region has {inside.ndim} axes")
    if not inside.any() or inside.all():
        return np.zeros(inside.shape, dtype=np.float32)
    outside = ~inside
    # distance_transform_edt gives, for each non-zero voxel, the distance to the nearest zero.
    to_region = ndimage.distance_transform_edt(outside, sampling=spacing)
    to_background = ndimage.distance_transform_edt(inside, sampling=spacing)
    return (to_region - to_background).astype(np.float32)


def signed_distance_maps(regions: torch.Tensor | np.ndarray, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Signed distance maps ``(B, K, *S)`` float32 of ground-truth regions ``(B, K, *S)``.

    Computed with SciPy on the CPU, one sample and region at a time; a torch input's device
    is kept for the result. ``spacing`` has one value per spatial axis.
    """
    device = regions.device if isinstance(regions, torch.Tensor) else torch.device("cpu")
    array = regions.detach().cpu().numpy() if isinstance(regions, torch.Tensor) else np.asarray(regions)
    if array.ndim < 3:
        raise ValueError(f"regions must be (B, K, *spatial), got shape {array.shape}")
    maps = np.empty(array.shape, dtype=np.float32)
    for b in range(array.shape[0]):
        for k in range(array.shape[1]):
            maps[b, k] = signed_distance_map(array[b, k], spacing)
    return torch.from_numpy(maps).to(device)


def boundary_loss(
    student_logits: torch.Tensor,
    distance_maps: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean(phi * sigmoid(z))`` over batch, regions and voxels.

    Args:
        student_logits: ``(B, K, *S)`` sigmoid region logits.
        distance_maps: ``(B, K, *S)`` signed distance maps of the ground truth
            (:func:`signed_distance_maps`); never receives a gradient.
        mask: optional voxel weight ``(B, 1, *S)`` or ``(B, K, *S)`` (e.g. 0 on padding).

    Returns:
        A scalar: negative when probability sits inside the regions, positive outside.
    """
    check_channels_first("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "distance_maps", distance_maps)
    values = distance_maps.detach().float() * torch.sigmoid(student_logits.float())
    return weighted_voxel_mean(values, voxel_weight_like(mask, values, "mask"))


def boundary_loss_from_regions(
    student_logits: torch.Tensor,
    regions: torch.Tensor,
    *,
    spacing: Sequence[float] | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`boundary_loss` of ``student_logits (B, K, *S)``, with the distance maps of the
    ground-truth ``regions (B, K, *S)`` computed here (CPU, ``spacing`` per spatial axis)."""
    check_same_shape("student_logits", student_logits, "regions", regions)
    return boundary_loss(student_logits, signed_distance_maps(regions, spacing), mask=mask)
