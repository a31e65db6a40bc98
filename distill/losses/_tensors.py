"""Shape checks and reductions shared by the loss functions (no loss lives here).

Every loss reduces over the batch *and* every voxel, so its value does not grow with the
patch volume. Optional voxel weights follow one rule, implemented once in
:func:`weighted_voxel_mean`.
"""

from __future__ import annotations

import torch


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ``ValueError`` naming both tensors unless their shapes are equal."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; they must match"
        )


def check_channels_first(name: str, x: torch.Tensor, min_dims: int = 3) -> None:
    """Raise unless ``x`` is ``(B, C, *S)`` with at least one spatial axis."""
    if x.dim() < min_dims:
        raise ValueError(f"{name} must be (B, C, *spatial), got shape {tuple(x.shape)}")


def check_probabilities(name: str, p: torch.Tensor) -> None:
    """Raise unless ``p`` is a floating tensor with every value in [0, 1]."""
    if not torch.is_floating_point(p):
        raise TypeError(
            f"{name} must hold probabilities as floats in [0, 1], got dtype {p.dtype} "
            "(convert cached uint8 values q with p = q / 255 first)"
        )
    if p.numel():
        low, high = (v.item() for v in torch.aminmax(p.detach()))
        if low < 0 or high > 1:
            raise ValueError(f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")


def check_eps(eps: float) -> None:
    """Raise unless the probability clamp ``eps`` lies in (0, 0.5)."""
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}")


def check_temperature(temperature: float) -> None:
    """Raise unless the temperature is a positive number."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half-precision inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def voxel_weight_like(weight: torch.Tensor | None, values: torch.Tensor, name: str = "weight") -> torch.Tensor | None:
    """Validate a voxel weight against ``values (B, C, *S)`` and return it detached, as float.

    The weight may be ``(B, 1, *S)`` (one weight per voxel, shared by the channels) or
    ``(B, C, *S)`` (one per voxel and channel); values must be >= 0.
    """
    if weight is None:
        return None
    batch, channels, *spatial = values.shape
    allowed = {(batch, 1, *spatial), (batch, channels, *spatial)}
    if tuple(weight.shape) not in allowed:
        raise ValueError(
            f"{name} must have shape {(batch, 1, *spatial)} or {(batch, channels, *spatial)}, got {tuple(weight.shape)}"
        )
    weight = weight.detach().to(dtype=values.dtype)
    if weight.numel() and weight.min() < 0:
        raise ValueError(f"{name} must be >= 0 everywhere")
    return weight


def weighted_voxel_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values (B, C, *S)`` over every element, or its weighted mean.

    With a weight ``w`` (already checked by :func:`voxel_weight_like`, broadcast over the
    channels when it has one channel) the result is ``sum(w * v) / sum(w)`` over batch,
    channels and voxels, so a binary mask gives the plain mean over the kept voxels. An
    all-zero weight gives 0 (still differentiable).
    """
    if weight is None:
        return values.mean()
    weight = weight.expand_as(values)
    return (weight * values).sum() / weight.sum().clamp_min(torch.finfo(values.dtype).tiny)
