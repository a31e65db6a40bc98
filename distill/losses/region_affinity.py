"""Region-affinity and importance-map distillation, after Qin et al., "Efficient Medical
Image Segmentation Based on Knowledge Distillation", IEEE TMI 40(12), 2021.

Two feature-level terms; both compare each network only with itself first, so student
and teacher features may have any channel widths and grids (no projection is needed).

Region affinity (:func:`region_affinity_loss`). For one network and one sample:

* region prototypes: ``P_r = sum_x m_r(x) F(x) / sum_x m_r(x)``, the mask-weighted mean
  feature of region ``r``. Masks come from the ground truth at full resolution and are
  average-pooled to the feature grid, so ``m_r(x)`` is the fraction of feature cell ``x``
  that lies in region ``r`` (the authors' public code resizes masks by nearest neighbour;
  area fractions keep thin regions from vanishing on coarse grids).
* region affinity: ``A_rs = cos(P_r, P_s)`` for every pair ``r < s``.
* loss: ``mean over samples and pairs (A^S_rs - A^T_rs)²``, over the pairs whose two
  regions are both present in the sample (positive mask mass on the feature grid); 0
  when no pair is present.

For BraTS the regions are the ground-truth whole tumour, tumour core and enhancing tumour
masks plus, with ``add_background=True``, the background (voxels in no region). The
regions may overlap: a prototype is a masked mean, no softmax or partition is involved.

Importance maps (:func:`importance_map_loss`), the attention-transfer form of Zagoruyko
and Komodakis (ICLR 2017) as Qin et al. use it:

* map: ``a(x) = mean_c |F_c(x)|^p`` (``p = exponent``, 4 as in the authors' public code;
  attention transfer used 2), pooled to the coarser of the two grids when the student's
  and teacher's grids differ, then L2-normalised over the voxels of each sample.
* loss: ``mean over samples of sum_x (a^S(x) - a^T(x))²``, in [0, 4]. Because the maps are
  normalised, tiling a patch 2x along each axis leaves the value unchanged, and a positive
  scale of either feature map does not change it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses._tensors import check_channels_first

DEFAULT_IMPORTANCE_EXPONENT = 4


def region_prototypes(features: torch.Tensor, region_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask-weighted mean features per region.

    Args:
        features: ``(B, C, *S)``.
        region_masks: ``(B, R, *M)`` bool or float in [0, 1], every ``M`` axis at least as
            long as the matching ``S`` axis (masks are average-pooled to ``S``).

    Returns:
        ``(prototypes (B, R, C), present (B, R) bool)``; an absent region's prototype is 0.
    """
    check_channels_first("features", features)
    masks = _masks_on_grid(region_masks, features)
    mass = masks.flatten(2).sum(-1)  # (B, R)
    weighted = torch.einsum("brx,bcx->brc", masks.flatten(2), features.float().flatten(2))
    prototypes = weighted / mass.clamp_min(torch.finfo(weighted.dtype).tiny).unsqueeze(-1)
    return prototypes, mass > 0


def region_affinity(prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every pair of prototypes ``(B, R, C)`` -> ``(B, R, R)``."""
    unit = F.normalize(prototypes, dim=-1)
    return unit @ unit.transpose(1, 2)


def region_affinity_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    region_masks: torch.Tensor,
    *,
    add_background: bool = True,
) -> torch.Tensor:
    """Squared difference of student and teacher region affinities (see the module docstring).

    Args:
        student_features: ``(B, Cs, *Ss)`` student feature map.
        teacher_features: ``(B, Ct, *St)`` teacher feature map (no gradient flows into it).
        region_masks: ``(B, R, *M)`` ground-truth region masks (bool or float), at a grid at
            least as fine as both feature grids.
        add_background: prepend the background mask ``1 - max_r m_r``.

    Returns:
        A scalar, the mean over present pairs; 0 if no sample has two present regions.

    Raises:
        ValueError: batch sizes differ, masks coarser than a feature grid, or fewer than two
        regions in total.
    """
    if student_features.shape[0] != teacher_features.shape[0] or region_masks.shape[0] != student_features.shape[0]:
        raise ValueError("student features, teacher features and region masks must have the same batch size")
    masks = _with_background(region_masks.float()) if add_background else region_masks.float()
    if masks.shape[1] < 2:
        raise ValueError("region affinity needs at least two regions (counting the background)")
    student_protos, present = region_prototypes(student_features, masks)
    with torch.no_grad():
        teacher_protos, _ = region_prototypes(teacher_features.detach(), masks)
    pairs = _present_pairs(present)
    squared = (region_affinity(student_protos) - region_affinity(teacher_protos)).pow(2)
    return (squared * pairs).sum() / pairs.sum().clamp_min(1)


def importance_map(features: torch.Tensor, exponent: float = DEFAULT_IMPORTANCE_EXPONENT) -> torch.Tensor:
    """``mean_c |F_c|^p`` of ``(B, C, *S)`` features -> ``(B, 1, *S)`` (not normalised)."""
    check_channels_first("features", features)
    return features.float().abs().pow(exponent).mean(dim=1, keepdim=True)


def importance_map_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    *,
    exponent: float = DEFAULT_IMPORTANCE_EXPONENT,
) -> torch.Tensor:
    """Squared distance of L2-normalised importance maps, summed over voxels, mean over the batch.

    Args:
        student_features: ``(B, Cs, *Ss)``.
        teacher_features: ``(B, Ct, *St)``; no gradient flows into it.
        exponent: ``p > 0`` in ``mean_c |F_c|^p``.

    Returns:
        A scalar in [0, 4].
    """
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    if student_features.shape[0] != teacher_features.shape[0] or student_features.dim() != teacher_features.dim():
        raise ValueError(
            f"student features {tuple(student_features.shape)} and teacher features "
            f"{tuple(teacher_features.shape)} need the same batch size and number of axes"
        )
    student_map = importance_map(student_features, exponent)
    teacher_map = importance_map(teacher_features.detach(), exponent)
    grid = tuple(min(a, b) for a, b in zip(student_map.shape[2:], teacher_map.shape[2:]))
    student_unit = F.normalize(_pool_to(student_map, grid).flatten(1), dim=1)
    teacher_unit = F.normalize(_pool_to(teacher_map, grid).flatten(1), dim=1)
    return (student_unit - teacher_unit).pow(2).sum(dim=1).mean()


def _masks_on_grid(region_masks: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Masks ``(B, R, *M)`` as area fractions on the feature grid ``S``."""
    masks = region_masks.float()
    grid = tuple(features.shape[2:])
    if masks.dim() != features.dim():
        raise ValueError(
            f"region masks {tuple(masks.shape)} and features {tuple(features.shape)} need the same number of axes"
        )
    if any(m < s for m, s in zip(masks.shape[2:], grid)):
        raise ValueError(f"region masks grid {tuple(masks.shape[2:])} is coarser than the feature grid {grid}")
    return _pool_to(masks, grid)


def _pool_to(x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(grid):
        return x
    pools = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    if len(grid) not in pools:
        raise ValueError(f"only 1 to 3 spatial axes are supported, got {len(grid)}")
    return pools[len(grid)](x, grid)


def _with_background(masks: torch.Tensor) -> torch.Tensor:
    background = 1.0 - masks.amax(dim=1, keepdim=True)
    return torch.cat([background, masks], dim=1)


def _present_pairs(present: torch.Tensor) -> torch.Tensor:
    """``(B, R, R)`` float mask of pairs ``r < s`` with both regions present."""
    both = present.unsqueeze(2) & present.unsqueeze(1)
    upper = torch.ones(present.shape[1], present.shape[1], dtype=torch.bool, device=present.device).triu(1)
    return (both & upper).float()
