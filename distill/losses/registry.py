"""Every loss a trainer can ask for by name: an explicit table of builders, each returning a :class:`LossTerm`.

In the style of timm's model registry, minus its decorators: :data:`LOSSES` is written out
here, so the set of losses is what this file says, never what happened to be imported.
``build_loss(name, **options)`` looks the name up and calls its builder:

* ``term_name``: the term's log name (default: the registry name);
* ``weight``, ``schedule``, ``inputs``, ``optional_inputs``: as in :class:`LossTerm`;
* any other option is the loss's own (``temperature=2.0``, ``batch_dice=True``, ...),
  bound to the function, or for ``graph_flow`` passed to :class:`GraphFlowLoss`. Options
  the loss does not take are refused here, not at the first training step.

Adding a loss: write it as a function (or small module) in its own file, with a
docstring that states its tensor shapes and cites its paper, then add one line below;
``tests/unit/test_loss_registry.py`` runs every name in the table.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from distill.errors import DistillError
from distill.losses.boundary import boundary_loss, boundary_loss_from_regions
from distill.losses.composite import LossTerm, Schedule
from distill.losses.dice_bce import (
    label_dice_ce_loss,
    region_bce_loss,
    region_dice_bce_loss,
    region_dice_loss,
    soft_dice_loss,
)
from distill.losses.graph_flow import GraphFlowLoss
from distill.losses.kd_balanced import kd_sigmoid_region_balanced
from distill.losses.kd_correction import kd_sigmoid_corrected
from distill.losses.kd_dice import kd_soft_dice
from distill.losses.kd_sigmoid import kd_sigmoid
from distill.losses.kd_softmax import kd_softmax
from distill.losses.kd_teachers import kd_sigmoid_teachers, kd_softmax_teachers
from distill.losses.paraphraser import reconstruction_loss
from distill.losses.region_affinity import importance_map_loss, region_affinity_loss
from distill.losses.uncertainty_regression import uncertainty_regression

Inputs = Mapping[str, str] | Sequence[str]


class UnknownLossError(DistillError, ValueError):
    """A loss name that is not in :data:`LOSSES`, or an option the loss does not take."""


def loss_term(
    target: Callable[..., Any],
    term_name: str,
    *,
    construct: bool = False,
    weight: float = 1.0,
    schedule: Schedule | None = None,
    inputs: Inputs | None = None,
    optional_inputs: Inputs | None = None,
    **options: Any,
) -> LossTerm:
    """A term calling the loss function ``target`` with ``options`` bound (``target`` itself when
    there are none), or with ``construct`` the module ``target(**options)`` (e.g. one with
    learnable projections)."""
    try:
        inspect.signature(target).bind_partial(**options)
    except TypeError as error:
        raise UnknownLossError(f"loss term {term_name!r}: {error}") from None
    if construct:
        fn = target(**options)
    else:
        fn = functools.partial(target, **options) if options else target
    # LossTerm's own defaults stand unless the caller overrides them
    extra: dict[str, Any] = {}
    if schedule is not None:
        extra["schedule"] = schedule
    if optional_inputs is not None:
        extra["optional_inputs"] = optional_inputs
    return LossTerm(term_name, fn, weight, inputs=inputs, **extra)


LOSSES: dict[str, Callable[..., LossTerm]] = {
    # supervised, against the ground truth (dice_bce)
    "soft_dice": functools.partial(loss_term, soft_dice_loss),
    "region_bce": functools.partial(loss_term, region_bce_loss),
    "region_dice": functools.partial(loss_term, region_dice_loss),
    "region_dice_bce": functools.partial(loss_term, region_dice_bce_loss),
    "label_dice_ce": functools.partial(loss_term, label_dice_ce_loss),
    "boundary": functools.partial(loss_term, boundary_loss_from_regions),
    "boundary_maps": functools.partial(loss_term, boundary_loss),
    # logit distillation, one teacher or a mean over several
    "kd_sigmoid": functools.partial(loss_term, kd_sigmoid),
    "kd_softmax": functools.partial(loss_term, kd_softmax),
    "kd_sigmoid_teachers": functools.partial(loss_term, kd_sigmoid_teachers),
    "kd_softmax_teachers": functools.partial(loss_term, kd_softmax_teachers),
    # region KD that respects the expert labels: teacher-label correction, region balance
    "kd_sigmoid_corrected": functools.partial(loss_term, kd_sigmoid_corrected),
    "kd_sigmoid_region_balanced": functools.partial(loss_term, kd_sigmoid_region_balanced),
    "kd_soft_dice": functools.partial(loss_term, kd_soft_dice),
    # feature distillation
    "graph_flow": functools.partial(loss_term, GraphFlowLoss, construct=True),
    "region_affinity": functools.partial(loss_term, region_affinity_loss),
    "importance_map": functools.partial(loss_term, importance_map_loss),
    "paraphraser_reconstruction": functools.partial(loss_term, reconstruction_loss),
    # the distilled-uncertainty head against the cached teacher spread
    "uncertainty_regression": functools.partial(loss_term, uncertainty_regression),
}


def build_loss(name: str, *, term_name: str | None = None, **options: Any) -> LossTerm:
    """The :class:`LossTerm` of loss ``name`` (a key of :data:`LOSSES`) with ``options``.

    Raises:
        UnknownLossError: ``name`` is not registered (the message lists every known name),
            or an option the loss does not take.
    """
    try:
        builder = LOSSES[name]
    except KeyError:
        raise UnknownLossError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}") from None
    return builder(name if term_name is None else term_name, **options)
