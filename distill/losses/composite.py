"""A weighted sum of loss terms, each with its own schedule, logging every term.

A :class:`LossTerm` names a loss function, its base weight and a schedule (a function of
the training step returning a multiplier). At step ``t`` term ``i`` contributes
``weight_i * schedule_i(t) * raw_i``, and only terms whose effective weight is non-zero are
evaluated, so a term that is ramped in late costs nothing before it starts.

Inputs are passed by name: ``CompositeLoss(terms)(step, **tensors)`` hands each term the
tensors it asks for. By default a term asks for its function's required parameters under
the same names (e.g. ``kd_sigmoid`` needs ``student_logits`` and ``teacher_probs``);
``inputs`` maps parameter names to other tensor names, ``optional_inputs`` names tensors
that are passed only when given (e.g. a voxel ``weight``). A missing input raises
:class:`MissingLossInputError` naming the term and the input. Fixed options (temperature,
batch Dice, ...) are bound beforehand, e.g. with ``functools.partial``.

A term's function returns a scalar tensor, or a mapping of named scalar parts (e.g.
:class:`GraphFlowLoss` returns ``{"vertex": ..., "edge": ...}``) whose sum is its raw value.

Logged values (Python floats), per term ``name``:

* ``name/weight``: the effective weight ``weight * schedule(step)`` (always logged);
* ``name/raw`` and ``name/weighted``: the term's value and its weighted value (only for
  terms evaluated at this step; skipped terms log ``name/weighted`` = 0.0);
* ``name/<part>``: each part of a mapping-valued term as the function returned it
  (before the term's weight);

and ``total``. When no term is active the total is a constant 0 without gradient:
calling ``backward`` on it fails, so a trainer should not configure every term off.

Schedules (multiplier at step ``t``, steps counted from 0):

* ``constant(c)``: ``c`` at every step;
* ``step_on(s)``: 0 for ``t < s``, 1 from ``t = s``;
* ``ramp_in(s, n)``: 0 for ``t <= s``, then ``(t - s) / n`` rising linearly, 1 from
  ``t = s + n`` on (``n = 0`` is ``step_on(s)``).
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError

Schedule = Callable[[int], float]

_RESERVED_LOG_SUFFIXES = frozenset({"weight", "raw", "weighted"})


class MissingLossInputError(DistillError, LookupError):
    """A loss term needs a tensor that the caller did not pass."""


@dataclass(frozen=True)
class Constant:
    """Schedule: the same multiplier at every step."""

    value: float = 1.0

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class StepOn:
    """Schedule: 0 before ``start_step``, 1 from it on."""

    start_step: int

    def __call__(self, step: int) -> float:
        return 1.0 if step >= self.start_step else 0.0


@dataclass(frozen=True)
class RampIn:
    """Schedule: 0 up to ``start_step``, linear to 1 over ``ramp_steps``, then 1."""

    start_step: int
    ramp_steps: int

    def __call__(self, step: int) -> float:
        if self.ramp_steps == 0:
            return 1.0 if step >= self.start_step else 0.0
        return min(max((step - self.start_step) / self.ramp_steps, 0.0), 1.0)


def constant(value: float = 1.0) -> Constant:
    """Schedule returning ``value`` at every step."""
    _check_finite_non_negative("constant value", value)
    return Constant(float(value))


def step_on(start_step: int) -> StepOn:
    """Schedule switching from 0 to 1 at ``start_step``."""
    _check_step("start_step", start_step)
    return StepOn(start_step)


def ramp_in(start_step: int, ramp_steps: int) -> RampIn:
    """Schedule rising linearly from 0 at ``start_step`` to 1 at ``start_step + ramp_steps``."""
    _check_step("start_step", start_step)
    _check_step("ramp_steps", ramp_steps)
    return RampIn(start_step, ramp_steps)


@dataclass(frozen=True, eq=False)
class LossTerm:
    """One weighted, scheduled term of a :class:`CompositeLoss`.

    Args:
        name: unique log name (no ``/``).
        fn: the loss; called with keyword arguments only; returns a scalar tensor or a
            mapping of named scalar tensors.
        weight: base weight, >= 0.
        schedule: multiplier as a function of the step (default ``constant(1)``).
        inputs: ``fn`` parameter -> tensor name, or a sequence of names used for both.
            Default: the required parameters of ``fn`` (no default value), same names.
        optional_inputs: like ``inputs``, passed only when the caller gives that tensor.
    """

    name: str
    fn: Callable[..., Any]
    weight: float = 1.0
    schedule: Schedule = field(default_factory=Constant)
    inputs: Mapping[str, str] | Sequence[str] | None = None
    optional_inputs: Mapping[str, str] | Sequence[str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"loss term name must be non-empty and contain no '/', got {self.name!r}")
        _check_finite_non_negative(f"weight of loss term {self.name!r}", self.weight)
        required = _required_parameters(self.name, self.fn) if self.inputs is None else self.inputs
        object.__setattr__(self, "inputs", _as_name_map(required))
        object.__setattr__(self, "optional_inputs", _as_name_map(self.optional_inputs))

    def weight_at(self, step: int) -> float:
        """Effective weight ``weight * schedule(step)``."""
        return self.weight * float(self.schedule(step))

    def arguments(self, tensors: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``fn`` picked from ``tensors``; raises if a required one is missing."""
        missing = [tensor for tensor in self.inputs.values() if tensor not in tensors]
        if missing:
            raise MissingLossInputError(
                f"loss term {self.name!r} needs input {missing[0]!r}, which was not given "
                f"(missing: {missing}; given: {sorted(tensors)})"
            )
        kwargs = {param: tensors[tensor] for param, tensor in self.inputs.items()}
        kwargs.update({param: tensors[tensor] for param, tensor in self.optional_inputs.items() if tensor in tensors})
        return kwargs


class CompositeLoss(nn.Module):
    """``forward(step, **tensors) -> (total, logs)``: the scheduled weighted sum of the terms.

    Terms whose ``fn`` is an ``nn.Module`` (e.g. :class:`GraphFlowLoss` with its
    translators) are registered as submodules, so ``.to(device)``, ``.parameters()`` and
    ``state_dict()`` of the composite cover them.

    Raises:
        ValueError: no terms, or two terms with the same name.
    """

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        super().__init__()
        terms = tuple(terms)
        if not terms:
            raise ValueError("a composite loss needs at least one term")
        names = [term.name for term in terms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"loss term names must be unique, repeated: {duplicates}")
        self.terms = terms
        self.term_modules = nn.ModuleDict({term.name: term.fn for term in terms if isinstance(term.fn, nn.Module)})

    def active_terms(self, step: int) -> list[LossTerm]:
        """The terms with a non-zero effective weight at ``step``."""
        _check_step("step", step)
        return [term for term in self.terms if term.weight_at(step) != 0.0]

    def inputs_needed(self, step: int | None = None) -> set[str]:
        """Tensor names the active terms at ``step`` require (every term's when ``step`` is None).

        Lets a trainer skip expensive inputs (e.g. teacher features) while their term is off.
        """
        terms = self.terms if step is None else self.active_terms(step)
        return {tensor for term in terms for tensor in term.inputs.values()}

    def forward(self, step: int, **tensors: Any) -> tuple[torch.Tensor, dict[str, float]]:
        active = {term.name for term in self.active_terms(step)}
        logs: dict[str, float] = {}
        total: torch.Tensor | None = None
        for term in self.terms:
            weight = term.weight_at(step)
            logs[f"{term.name}/weight"] = weight
            if term.name not in active:
                logs[f"{term.name}/weighted"] = 0.0
                continue
            raw, parts = _raw_value(term.name, term.fn(**term.arguments(tensors)))
            weighted = weight * raw
            logs[f"{term.name}/raw"] = raw.item()
            logs[f"{term.name}/weighted"] = weighted.item()
            logs.update({f"{term.name}/{part}": value.item() for part, value in parts.items()})
            total = weighted if total is None else total + weighted
        if total is None:
            total = torch.zeros((), device=_first_device(tensors))
        logs["total"] = total.item()
        return total, logs


def _raw_value(name: str, result: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A term's scalar value and its named parts (none for a plain tensor)."""
    if isinstance(result, torch.Tensor):
        _check_scalar(name, result)
        return result, {}
    if isinstance(result, Mapping) and result:
        for part, value in result.items():
            if part in _RESERVED_LOG_SUFFIXES or "/" in str(part):
                raise ValueError(f"loss term {name!r} returned a part named {part!r}, which clashes with log names")
            _check_scalar(f"{name}/{part}", value)
        return sum(result.values()), dict(result)
    raise TypeError(
        f"loss term {name!r} must return a scalar tensor or a non-empty mapping of them, got {type(result)}"
    )


def _check_scalar(name: str, value: Any) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
        raise ValueError(f"loss term {name!r} must return a scalar tensor, got {shape}")


def _required_parameters(name: str, fn: Callable[..., Any]) -> list[str]:
    try:
        signature = inspect.signature(fn.forward if isinstance(fn, nn.Module) else fn)
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot read the parameters of loss term {name!r}; pass inputs= explicitly") from error
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    positional_only = [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    if positional_only:
        raise ValueError(f"loss term {name!r} has positional-only parameters {positional_only}; wrap it")
    return [p.name for p in signature.parameters.values() if p.kind in kinds and p.default is inspect.Parameter.empty]


def _as_name_map(names: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    if isinstance(names, Mapping):
        return dict(names)
    if isinstance(names, str):
        raise TypeError(f"inputs must be a mapping or a sequence of names, got the string {names!r}")
    return {name: name for name in names}


def _first_device(tensors: Mapping[str, Any]) -> torch.device:
    for value in tensors.values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _check_step(name: str, value: int) -> None:
    try:
        as_int = operator.index(value)
    except TypeError:
        as_int = None
    if isinstance(value, bool) or as_int is None or as_int < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def _check_finite_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
