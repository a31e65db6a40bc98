"""Sizing students: count parameters and MACs, hit a parameter budget, plan teacher assistants.

``--params N`` -> :func:`config_for_params` (within +-5% of N);
``--ratio R``  -> :func:`config_for_ratio` (R x the parameters of ONE teacher member network).

Orders of magnitude: ``R = 0.08`` of the default 31 M-parameter BraTS nnU-Net asks for ~2.5 M
parameters, while 0.08 of a compact ~1.25 M teacher is ~100k; 30k-100k students of a full-size
teacher come from ``--params`` or ratios near 0.001-0.003.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distill.errors import DistillError
from distill.students.registry import student_config
from distill.students.unet import SIGMOID, StudentConfig, StudentUNet

MIN_STUDENT_PARAMS = 1_000  # below this a 3D U-Net has a couple of channels per stage: refuse, never guess
DEFAULT_TOLERANCE = 0.05
MACS_SIZE = 128  # MACs are reported per 128^3 tile, the unit the design notes use
MAX_DEPTH = 6
SCALE_RANGE = (1e-3, 1e3)  # width scales searched; 2-wide stages at the bottom, ~500 M parameters at the top
SEARCH_STEPS = 24  # bisection steps on log(scale): a final step of 14 / 2**24 ~ 1e-6 is far finer than one channel


class StudentSizingError(DistillError):
    """A parameter budget or ratio that no student can meet (too small, not below the teacher, unreachable)."""


def count_parameters(model: nn.Module) -> int:
    """All parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, shape: tuple[int, ...] | None = None) -> int:
    """Multiply-accumulates of one forward pass on an input of ``shape`` (default ``(1, C_in, 128, 128, 128)``).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2) on a copy of
    the model on the meta device, so nothing is computed and a 128^3 count takes milliseconds.
    Only convolutions (plain and transposed) and matrix products are counted; norms,
    activations, padding and interpolation are memory-bound extras that FLOP counters ignore.
    """
    in_channels = getattr(getattr(model, "config", None), "in_channels", 4)
    shape = shape or (1, in_channels, MACS_SIZE, MACS_SIZE, MACS_SIZE)
    meta_model = _on_meta(model)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta_model(torch.empty(shape, device="meta"))
    return counter.get_total_flops() // 2


def _on_meta(model: nn.Module) -> nn.Module:
    """A weightless copy of ``model`` on the meta device (students are rebuilt from their config)."""
    if isinstance(model, StudentUNet):
        with torch.device("meta"):
            return StudentUNet(model.config).eval()
    return copy.deepcopy(model).to("meta").eval()


@functools.lru_cache(maxsize=4096)
def config_parameters(config: StudentConfig) -> int:
    """Parameter count of the student ``config`` builds, without allocating weights.

    Cached: the sizing search asks again for configs it has already built.
    """
    with torch.device("meta"):
        return count_parameters(StudentUNet(config))


def uncertainty_head_cost(config: StudentConfig) -> tuple[int, int]:
    """``(parameters, MACs at 128^3)`` that the distilled-uncertainty head adds to ``config``'s student.

    Both counted on meta-device copies (no weights allocated), as the difference between the
    student with and without the head.
    """
    with_head, without = config.replace(uncertainty_head=True), config.replace(uncertainty_head=False)
    with torch.device("meta"):
        macs = count_macs(StudentUNet(with_head)) - count_macs(StudentUNet(without))
    return config_parameters(with_head) - config_parameters(without), macs


# ---------------------------------------------------------------------------------------------
# Budgets


def config_for_params(family: str, target_params: int, in_channels: int = 4, out_channels: int = 3,
                      output_kind: str = SIGMOID, tolerance: float = DEFAULT_TOLERANCE,
                      teacher_params: int | None = None, min_first_width: int = 0, **overrides) -> StudentConfig:
    """The ``family`` config whose parameter count is within ``tolerance`` of ``target_params``.

    Searches the width scale at the family's default depth first (bisection on a log scale;
    the count grows monotonically with the scale), then other depths, nearest first, and
    returns the closest count found within tolerance. ``depth=`` in ``overrides`` pins the
    depth; other overrides are config fields (``norm``, ``convs_per_stage``, ...).

    ``min_first_width``: the first stage gets at least this many channels, the other stages
    keep the family's widths at the scale searched (e.g. 4, so a 30k ``unet`` is ``(4, 7, 13, 27)``
    rather than ``(3, 7, 13, 27)``: no stage narrower than the four input modalities). The
    count still grows with the scale, so the search is the same; 0 (default) leaves the
    family's widths alone, so every budget gives the config it always gave.

    Raises:
        StudentSizingError: ``target_params`` below :data:`MIN_STUDENT_PARAMS`, not below
            ``teacher_params`` (when given), or not reachable within tolerance (the message
            names the closest achievable counts).
    """
    _check_budget(target_params, teacher_params)
    if "widths" in overrides or "width_scale" in overrides:
        raise StudentSizingError("a parameter budget sets the widths itself; do not pass widths or width_scale with it")
    if min_first_width < 0:
        raise StudentSizingError(f"min_first_width must be >= 0, got {min_first_width}")
    pinned_depth = overrides.pop("depth", None)
    fields = {"in_channels": in_channels, "out_channels": out_channels, "output_kind": output_kind, **overrides}
    depths = [pinned_depth] if pinned_depth else _depths_nearest_first(student_config(family, **fields).depth)
    misses: list[tuple[int, int]] = []  # (count, depth) of the nearest counts below and above the target
    for depth in depths:
        below, above = _bracket_width_scale(family, target_params, depth, fields, min_first_width)
        candidates = [c for c in (below, above) if c is not None]
        best = min(candidates, key=lambda c: abs(config_parameters(c) - target_params))
        if abs(config_parameters(best) - target_params) <= tolerance * target_params:
            _check_below_teacher(config_parameters(best), teacher_params)
            return best
        misses += [(config_parameters(c), depth) for c in candidates]
    closest = sorted(misses, key=lambda m: abs(m[0] - target_params))[:2]
    described = " and ".join(f"{count:,} (depth {depth})" for count, depth in closest)
    raise StudentSizingError(
        f"no {family!r} student has {target_params:,} parameters within ±{tolerance * 100:g}%; "
        f"closest achievable: {described}"
    )


def config_for_ratio(family: str, ratio: float, teacher_params: int, in_channels: int = 4, out_channels: int = 3,
                     output_kind: str = SIGMOID, tolerance: float = DEFAULT_TOLERANCE, **overrides) -> StudentConfig:
    """A ``family`` config with about ``ratio * teacher_params`` parameters.

    ``teacher_params`` is the count of ONE member network of the teacher ensemble (the cache
    manifest's ``parameters_per_member``), not of the whole ensemble.

    Raises:
        StudentSizingError: a non-positive ratio or teacher count, a ratio whose budget is under
            :data:`MIN_STUDENT_PARAMS` or not below the teacher, or an unreachable budget.
    """
    if not teacher_params or teacher_params <= 0:
        raise StudentSizingError(f"--ratio needs the teacher's parameter count per member, got {teacher_params!r}")
    if not ratio > 0:
        raise StudentSizingError(f"--ratio must be > 0, got {ratio}")
    target = round(ratio * teacher_params)
    if target >= teacher_params:
        raise StudentSizingError(
            f"--ratio {ratio} of a {teacher_params:,}-parameter teacher asks for {target:,} parameters, "
            "not fewer than the teacher: a student must be smaller (ratio < 1)"
        )
    if target < MIN_STUDENT_PARAMS:
        raise StudentSizingError(
            f"--ratio {ratio} of a {teacher_params:,}-parameter teacher gives {target:,} parameters, under the "
            f"{MIN_STUDENT_PARAMS:,} a student needs; use a ratio of at least "
            f"{MIN_STUDENT_PARAMS / teacher_params:.2g} or --params"
        )
    return config_for_params(
        family, target, in_channels, out_channels, output_kind, tolerance, teacher_params, **overrides
    )


def _check_budget(target_params: int, teacher_params: int | None) -> None:
    if target_params < MIN_STUDENT_PARAMS:
        raise StudentSizingError(
            f"a student of {target_params:,} parameters is too small to learn from a teacher; "
            f"ask for at least {MIN_STUDENT_PARAMS:,}"
        )
    if teacher_params is not None:
        _check_below_teacher(target_params, teacher_params)


def _check_below_teacher(params: int, teacher_params: int | None) -> None:
    if teacher_params is not None and params >= teacher_params:
        raise StudentSizingError(
            f"a student of {params:,} parameters is not smaller than its {teacher_params:,}-parameter teacher; "
            "ask for fewer"
        )


def _depths_nearest_first(default_depth: int) -> list[int]:
    """The default depth, then depths 1..MAX_DEPTH by distance from it (shallower first on ties)."""
    return sorted(range(1, MAX_DEPTH + 1), key=lambda d: (abs(d - default_depth), d))


def _bracket_width_scale(
    family: str, target: int, depth: int, fields: dict, min_first_width: int = 0
) -> tuple[StudentConfig | None, StudentConfig | None]:
    """The configs just below and just at-or-above ``target`` parameters at ``depth`` (``None`` where out of range)."""

    def config(scale: float) -> StudentConfig:
        scaled = student_config(family, width_scale=scale, depth=depth, **fields)
        if scaled.widths[0] >= min_first_width:
            return scaled
        return student_config(family, widths=(min_first_width, *scaled.widths[1:]), **fields)

    lo, hi = math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])
    if config_parameters(config(math.exp(lo))) >= target:
        return None, config(math.exp(lo))
    if config_parameters(config(math.exp(hi))) < target:
        return config(math.exp(hi)), None
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        if config_parameters(config(math.exp(mid))) < target:
            lo = mid
        else:
            hi = mid
    return config(math.exp(lo)), config(math.exp(hi))


# ---------------------------------------------------------------------------------------------
# Reporting


@dataclass(frozen=True)
class StudentSummary:
    """What the CLI prints after building a student.

    Attributes:
        parameters: all parameters.
        macs_128: MACs of one forward pass on a ``(1, C_in, 128, 128, 128)`` tile.
        ratio_to_teacher: ``parameters / teacher_params`` (one member network), or ``None``.
        divisor: spatial sizes are padded to a multiple of this inside the network.
        widths: channels per stage.
        family: registry name.
    """

    parameters: int
    macs_128: int
    ratio_to_teacher: float | None
    divisor: int
    widths: tuple[int, ...]
    family: str = ""

    def __str__(self) -> str:
        ratio = "" if self.ratio_to_teacher is None else f" (ratio {self.ratio_to_teacher:.4g} of the teacher)"
        widths = "-".join(str(w) for w in self.widths)
        return (
            f"student {self.family}: {self.parameters:,} parameters{ratio}, "
            f"{self.macs_128 / 1e9:.2f} GMACs per 128^3, widths {widths}, divisor {self.divisor}"
        )


def describe_student(model: StudentUNet, teacher_params: int | None = None) -> StudentSummary:
    """Parameters, MACs at 128^3 and, given the teacher's per-member count, the achieved ratio."""
    parameters = count_parameters(model)
    return StudentSummary(
        parameters=parameters,
        macs_128=count_macs(model),
        ratio_to_teacher=parameters / teacher_params if teacher_params else None,
        divisor=model.divisor,
        widths=model.config.widths,
        family=model.config.family,
    )


# ---------------------------------------------------------------------------------------------
# Teacher assistants (TAKD)

MAX_AUTO_ASSISTANTS = 3
GAP_PER_ASSISTANT = 10.0


def assistant_sizes(teacher_params: int, student_params: int, n_assistants: int) -> list[int]:
    """Parameter counts of ``n_assistants`` teacher assistants, largest (nearest the teacher) first.

    Rule: spaced evenly in log(parameters) between teacher T and student S, i.e.
    ``size_k = T**(1 - t) * S**t`` with ``t = k / (n + 1)`` for ``k = 1..n``, so every link of
    the chain teacher -> A1 -> ... -> An -> student shrinks by the same factor ``(T / S)**(1/(n+1))``.
    TAKD (Mirzadeh et al., AAAI 2020) publishes no sizing rule; this one is a choice.
    """
    if n_assistants < 0:
        raise StudentSizingError(f"the number of assistants must be >= 0, got {n_assistants}")
    _check_pair(teacher_params, student_params)
    n = n_assistants
    return [round(teacher_params ** (1 - k / (n + 1)) * student_params ** (k / (n + 1))) for k in range(1, n + 1)]


def auto_assistants(teacher_params: int, student_params: int) -> int:
    """How many assistants to put between teacher and student: enough that no link spans over ~10x.

    ``n = ceil(log10(T / S)) - 1``, capped at :data:`MAX_AUTO_ASSISTANTS` (each assistant is a
    full training run): a 12x gap (1.25 M teacher -> 100k) gets 1, a 1,000x gap (31 M -> 31k)
    gets 2, anything over 10,000x gets 3.
    """
    _check_pair(teacher_params, student_params)
    decades = math.log10(teacher_params / student_params)
    return max(0, min(MAX_AUTO_ASSISTANTS, math.ceil(decades - 1e-9) - 1))


def _check_pair(teacher_params: int, student_params: int) -> None:
    if not 0 < student_params < teacher_params:
        raise StudentSizingError(
            "assistants sit between a larger teacher and a smaller student; "
            f"got teacher {teacher_params:,} and student {student_params:,}"
        )


__all__ = [
    "MIN_STUDENT_PARAMS", "StudentSizingError", "StudentSummary", "assistant_sizes", "auto_assistants",
    "config_for_params", "config_for_ratio", "config_parameters", "count_macs", "count_parameters", "describe_student",
    "uncertainty_head_cost",
]  # fmt: skip
