"""Student families by name: ``name -> factory(width_scale, depth, widths, **overrides) -> StudentConfig``.

Families are registered with :func:`register` in this module, by explicit decoration (no
package walking, no import-time discovery), and their names drive the parametrised tests.
Every main family has a ``-tiny`` twin of a few thousand parameters for CI.

A factory maps a width scale (and depth) to concrete widths, which is what the sizing search
in :mod:`distill.students.sizing` varies to hit a parameter budget; ``widths=`` pins them.
Other keyword overrides are :class:`StudentConfig` fields (``out_channels``, ``output_kind``,
``norm``, ...).

Families:
    ``unet``: plain 3x3x3 convs, one per stage, 4 stages ``(4, 8, 16, 32) * scale``, strided
        stem, transposed-conv upsampling; ~43k parameters at scale 1.
    ``unet-separable``: depthwise-separable convs, two per stage, 5 stages
        ``(4, 8, 16, 32, 64) * scale``, strided stem, 1x1x1 conv + trilinear upsampling
        (a dense transposed conv would hold most of a separable net's parameters).
    ``unet-tiny`` / ``unet-separable-tiny``: the same designs with 3 stages ``(2, 4, 8)``.

Measured on 2 shared CPU threads, whole 4 x 240 x 240 x 155 volume, torch 2.14: 30k-100k
``unet`` students took ~0.7-1.5 s, ``unet-separable`` ~1.2-4 s (depthwise 3D convs save MACs,
not time: they are memory-bound and poorly served by CPU kernels). One conv per stage beat two
for plain nets at equal parameters (fewer full passes over the 1/2-resolution grid); for
separable nets, two per stage with doubling widths kept the first stage narrowest. Moving
model and input to ``torch.channels_last_3d`` cut torch CPU times by up to ~45%.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from distill.students.unet import StudentConfig, StudentConfigError, StudentUNet

StudentFactory = Callable[..., StudentConfig]
MIN_WIDTH = 2  # narrower stages carry too little to learn from; the sizing search stops here

_FAMILIES: dict[str, StudentFactory] = {}


def register(name: str) -> Callable[[StudentFactory], StudentFactory]:
    """Decorator: file ``factory`` under ``name`` (names are unique)."""

    def decorator(factory: StudentFactory) -> StudentFactory:
        if name in _FAMILIES:
            raise ValueError(f"student family {name!r} is already registered")
        _FAMILIES[name] = factory
        return factory

    return decorator


def available_students() -> list[str]:
    """Registered family names, sorted."""
    return sorted(_FAMILIES)


def student_config(family: str, **overrides: Any) -> StudentConfig:
    """The config of ``family`` with ``overrides`` (``width_scale``, ``depth``, ``widths`` or config fields)."""
    try:
        factory = _FAMILIES[family]
    except KeyError:
        known = ", ".join(available_students())
        raise StudentConfigError(f"unknown student family {family!r}; available: {known}") from None
    return factory(**overrides)


def build_student(config: StudentConfig | Mapping[str, Any] | str) -> StudentUNet:
    """A freshly initialised student from a config, its JSON dict, or a family name (defaults)."""
    if isinstance(config, str):
        config = student_config(config)
    elif not isinstance(config, StudentConfig):
        config = StudentConfig.from_dict(config)
    return StudentUNet(config)


def scaled_widths(base_width: float, depth: int, width_scale: float) -> tuple[int, ...]:
    """Widths doubling per stage: ``round(base_width * width_scale * 2**i)`` for i = 0..depth, at least 2.

    Doubling keeps most parameters in the coarse stages, where a parameter costs the fewest
    MACs per voxel; the first stage stays narrow because it runs on the most voxels.
    """
    if depth < 1:
        raise StudentConfigError(f"student depth must be >= 1, got {depth}")
    if width_scale <= 0:
        raise StudentConfigError(f"student width_scale must be > 0, got {width_scale}")
    return tuple(max(MIN_WIDTH, round(base_width * width_scale * 2**i)) for i in range(depth + 1))


def _make_config(
    family: str, base_width: float, depth: int, width_scale: float, widths: Sequence[int] | None,
    defaults: Mapping[str, Any], overrides: Mapping[str, Any],
) -> StudentConfig:
    """Widths from ``base_width * width_scale`` unless pinned, then the family defaults, then ``overrides``."""
    if "family" in overrides:
        raise StudentConfigError("the family of a registered student is its registry name; do not override it")
    if widths is None:
        widths = scaled_widths(base_width, depth, width_scale)
    return StudentConfig(family=family, widths=tuple(widths), **{**defaults, **overrides})


# Chosen by whole-volume CPU latency at 30k-100k parameters (see the module docstring).
PLAIN_DEFAULTS: Mapping[str, Any] = {"conv": "plain", "convs_per_stage": 1, "stem_stride": 2, "upsample": "transpose"}
SEPARABLE_DEFAULTS: Mapping[str, Any] = {
    "conv": "separable", "convs_per_stage": 2, "stem_stride": 2, "upsample": "trilinear",
}  # fmt: skip
Widths = Sequence[int] | None


@register("unet")
def unet(width_scale: float = 1.0, depth: int = 3, widths: Widths = None, **overrides: Any) -> StudentConfig:
    """Plain 3x3x3 convs, one per stage, strided stem; widths ``(4, 8, 16, 32) * width_scale`` at depth 3."""
    return _make_config("unet", 4, depth, width_scale, widths, PLAIN_DEFAULTS, overrides)


@register("unet-tiny")
def unet_tiny(width_scale: float = 1.0, depth: int = 2, widths: Widths = None, **overrides: Any) -> StudentConfig:
    """CI-sized ``unet``: widths ``(2, 4, 8)``, a few thousand parameters."""
    return _make_config("unet-tiny", 2, depth, width_scale, widths, PLAIN_DEFAULTS, overrides)


@register("unet-separable")
def unet_separable(width_scale: float = 1.0, depth: int = 4, widths: Widths = None, **overrides: Any) -> StudentConfig:
    """Depthwise-separable convs, two per stage, strided stem; widths ``(4, 8, 16, 32, 64) * width_scale``."""
    return _make_config("unet-separable", 4, depth, width_scale, widths, SEPARABLE_DEFAULTS, overrides)


@register("unet-separable-tiny")
def unet_separable_tiny(
    width_scale: float = 1.0, depth: int = 2, widths: Widths = None, **overrides: Any
) -> StudentConfig:
    """CI-sized ``unet-separable``: widths ``(2, 4, 8)``, a few thousand parameters."""
    return _make_config("unet-separable-tiny", 2, depth, width_scale, widths, SEPARABLE_DEFAULTS, overrides)
