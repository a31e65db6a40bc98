"""Weighted ensembles of teachers, and fitting their per-region weights on validation cases.

An ensemble averages its members' probabilities channel by channel with weights
``w[member, channel]``; each column sums to 1. Different architectures are good at different
regions (one may find the enhancing rim, another the oedema), so each region gets its own
weights. Simple averaging (uniform weights) is the baseline every fit is reported against.

Uncertainty of the ensemble (law of total variance). Think of the ensemble's output at a voxel
as a random pass drawn by first picking member ``i`` with probability ``w_i`` and then one of
that member's passes. Member ``i`` reports the mean ``m_i`` and standard deviation ``s_i`` of
its own passes (TTA flips x folds). Then::

    mean     = sum_i w_i m_i
    variance = sum_i w_i s_i**2            (spread within members)
             + sum_i w_i (m_i - mean)**2   (disagreement between members)
    uncertainty = sqrt(variance)

With uniform weights and members of equal pass counts this is exactly the standard deviation
over all passes pooled together, which is what a single multi-fold teacher reports.

Weight fitting (:func:`fit_region_weights`) maximises, for each channel on its own, the mean
over cases of the Dice of ``weighted mean > 0.5`` (strictly above, as nnU-Net's region
conversion does) against the ground truth. The search runs on a simplex grid of ``step``:
exhaustively for up to :data:`EXHAUSTIVE_MAX_MEMBERS` members, by coordinate ascent (moving
one member's weight along the grid, the others rescaled, while Dice improves) beyond. Uniform weights are
always a candidate and ties go to the weights closest to uniform, so a fit never reports a
gain that is not there and never moves away from averaging when nothing helps.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.core.jsonfile import read_json_object
from distill.data.case import Case
from distill.data.conventions import REGIONS, LabelConvention, resolve_convention
from distill.errors import DistillError
from distill.eval.policy import policy_value
from distill.teacher.base import SIGMOID, SOFTMAX, SoftPrediction, Teacher, TeacherInfo

THRESHOLD = 0.5  # a voxel is foreground where the weighted mean is strictly above this
EXHAUSTIVE_MAX_MEMBERS = 4
WEIGHT_SUM_TOLERANCE = 1e-6
DICE_TIE_TOLERANCE = 1e-12
MAX_ASCENT_ROUNDS = 100
WEIGHTS_FORMAT = "distill-teacher-weights"
WEIGHTS_VERSION = 1
# Candidates x candidate voxels evaluated in one block (bounds memory of the boolean matrix).
_BLOCK_ELEMENTS = 20_000_000


def member_label(info: TeacherInfo) -> str:
    """Name of a member in weight files: its name plus a short identity hash.

    Two members of the same architecture stay distinct, and a weights file fitted for one set
    of weights is refused for a member whose weights or settings changed.
    """
    return f"{info.name}@{info.identity_hash[:12]}"


# --------------------------------------------------------------------------- weights


def uniform_weights(n_members: int, n_channels: int) -> np.ndarray:
    """``(n_members, n_channels)`` array of ``1 / n_members``."""
    return np.full((n_members, n_channels), 1.0 / n_members)


def check_weights(weights: Any, n_members: int, n_channels: int, source: str = "ensemble weights") -> np.ndarray:
    """Weights as float64 ``(n_members, n_channels)``: finite, non-negative, columns summing to 1."""
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (n_members, n_channels):
        raise DistillError(
            f"{source}: weights of shape {array.shape}, expected (members, channels) = ({n_members}, {n_channels})"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise DistillError(f"{source}: weights must be finite and non-negative, got {array.tolist()}")
    sums = array.sum(axis=0)
    if np.any(np.abs(sums - 1.0) > WEIGHT_SUM_TOLERANCE):
        raise DistillError(
            f"{source}: each channel's weights must sum to 1, got column sums {np.round(sums, 6).tolist()}"
        )
    return array


# --------------------------------------------------------------------------- ensemble


def _check_compatible(infos: Sequence[TeacherInfo]) -> None:
    """All members must produce the same kind of output in the same channel order."""
    first = infos[0]
    for other in infos[1:]:
        if other.output_kind != first.output_kind:
            raise DistillError(
                f"ensemble members {first.name!r} and {other.name!r} differ in output kind: "
                f"{first.output_kind} vs {other.output_kind}"
            )
        if tuple(other.channels) != tuple(first.channels):
            raise DistillError(
                f"ensemble members {first.name!r} and {other.name!r} differ in channels: "
                f"{list(first.channels)} vs {list(other.channels)}"
            )


class WeightedEnsemble:
    """Members averaged with per-channel weights; a :class:`~distill.teacher.base.Teacher` itself.

    Args:
        members: teachers with the same output kind and channel names.
        weights: ``(n_members, K)``, each column summing to 1; ``None`` = uniform.

    ``info.parameters_per_member`` is the largest member's count: a student's ``--ratio``
    is meant relative to one teacher network, and the largest is the conservative choice.
    Softmax members take one weight per member (all columns equal), so the weighted mean
    stays a distribution over labels.
    """

    def __init__(self, members: Sequence[Teacher], weights: np.ndarray | None = None) -> None:
        if not members:
            raise DistillError("an ensemble needs at least one member")
        self.members = list(members)
        infos = [m.info for m in self.members]
        _check_compatible(infos)
        self.labels = tuple(member_label(i) for i in infos)
        if len(set(self.labels)) != len(self.labels):
            raise DistillError(f"ensemble lists the same member twice: {list(self.labels)}")
        n_channels = len(infos[0].channels)
        if weights is None:
            self.weights = uniform_weights(len(members), n_channels)
        else:
            self.weights = check_weights(weights, len(members), n_channels)
        if infos[0].output_kind == SOFTMAX and not np.allclose(self.weights, self.weights[:, :1]):
            raise DistillError(
                "softmax members need the same weight in every channel, "
                "or the weighted mean is no longer a distribution over labels"
            )
        self._info = self._describe(infos)

    @classmethod
    def from_weights_file(cls, members: Sequence[Teacher], path: Path | str) -> WeightedEnsemble:
        """Members with the weights a :func:`save_weights` file holds for exactly these members."""
        labels = [member_label(m.info) for m in members]
        fit = load_weights(path, labels, channels=members[0].info.channels if members else None)
        return cls(members, fit.weights)

    def _describe(self, infos: Sequence[TeacherInfo]) -> TeacherInfo:
        ttas = sorted({i.tta for i in infos})
        return TeacherInfo(
            name="ensemble(" + ", ".join(i.name for i in infos) + ")",
            output_kind=infos[0].output_kind,
            channels=tuple(infos[0].channels),
            parameters_per_member=max(i.parameters_per_member for i in infos),
            members=self.labels,
            tta=ttas[0] if len(ttas) == 1 else "+".join(ttas),
            preprocessing={label: dict(i.preprocessing) for label, i in zip(self.labels, infos)},
            identity={
                "members": [i.identity_hash for i in infos],
                "weights": np.round(self.weights, 9).tolist(),
            },
        )

    @property
    def info(self) -> TeacherInfo:
        return self._info

    def _selection(self, members: Sequence[str] | None) -> list[tuple[int, Sequence[str] | None]]:
        """Which members run, each with the member names to pass on.

        ``members`` may name whole ensemble members (their labels, as in ``info.members``) or
        sub-members such as folds (``"fold_0"``), which are passed on to every member that
        lists them; members named neither way are left out.
        """
        if members is None:
            return [(i, None) for i in range(len(self.members))]
        wanted = set(members)
        selection: list[tuple[int, Sequence[str] | None]] = []
        for i, (label, member) in enumerate(zip(self.labels, self.members)):
            if label in wanted:
                selection.append((i, None))
                continue
            own = [name for name in members if name in member.info.members]
            if own:
                selection.append((i, own))
        if not selection:
            raise DistillError(f"none of the requested members {list(members)} belongs to {self.info.name}")
        return selection

    def _selected_weights(self, indices: Sequence[int]) -> np.ndarray:
        """Weights of the selected members renormalised per channel; uniform where they were all 0."""
        chosen = self.weights[list(indices)]
        sums = chosen.sum(axis=0)
        fallback = np.full_like(chosen, 1.0 / len(indices))
        return np.where(sums > 0, chosen / np.where(sums > 0, sums, 1.0), fallback)

    def predict(self, case: Case, members: Sequence[str] | None = None) -> SoftPrediction:
        """Weighted mean ``(K, *case.shape)`` and total-variance uncertainty (module docstring).

        Members whose weight is 0 in every channel are not run.
        """
        selection = self._selection(members)
        weights = self._selected_weights([i for i, _ in selection])
        mean_sum: np.ndarray | None = None
        second_moment: np.ndarray | None = None
        n_passes = 0
        for (index, subset), member_weights in zip(selection, weights):
            if not np.any(member_weights > 0):
                continue
            prediction = self.members[index].predict(case, subset)
            p = prediction.probabilities.astype(np.float64)
            s = prediction.uncertainty.astype(np.float64)
            if mean_sum is not None and p.shape != mean_sum.shape:
                raise DistillError(
                    f"case {case.case_id}: member {self.labels[index]!r} predicted shape {p.shape}, "
                    f"others {mean_sum.shape}"
                )
            w = member_weights.reshape((-1,) + (1,) * (p.ndim - 1))  # (K, 1, 1, 1) broadcasts over voxels
            # E[X] and E[X^2] of the mixture; Var = E[X^2] - E[X]^2 is the law of total variance.
            mean_sum = w * p if mean_sum is None else mean_sum + w * p
            second = w * (s * s + p * p)
            second_moment = second if second_moment is None else second_moment + second
            n_passes += prediction.n_passes
        assert mean_sum is not None and second_moment is not None  # every column has a positive weight
        variance = np.maximum(second_moment - mean_sum * mean_sum, 0.0)
        return SoftPrediction(
            probabilities=mean_sum.astype(np.float32),
            uncertainty=np.sqrt(variance).astype(np.float32),
            n_passes=n_passes,
        )


# --------------------------------------------------------------------------- weight fitting


@dataclass
class WeightFit:
    """Result of a per-channel weight search.

    Attributes:
        weights: float64 ``(n_members, K)``, each column summing to 1.
        dice_fitted: ``(K,)`` mean Dice over cases with the fitted weights.
        dice_uniform: ``(K,)`` mean Dice over cases with uniform weights (the baseline).
        step: grid step of the search.
        n_cases: number of validation cases.
        search: ``"exhaustive"`` or ``"coordinate_ascent"``.
    """

    weights: np.ndarray
    dice_fitted: np.ndarray
    dice_uniform: np.ndarray
    step: float
    n_cases: int
    search: str


@dataclass
class _ChannelCase:
    """One case and one channel, reduced to the voxels some weighting could call foreground.

    A weighted mean never exceeds the largest member probability, so voxels where every
    member is at or below the threshold are background for every weighting; they only matter
    through the ground-truth count.

    Attributes:
        probabilities: float64 ``(n, M)`` member probabilities at the candidate voxels.
        truth: bool ``(n,)`` ground truth at the candidate voxels.
        n_truth: ground-truth foreground voxels of the whole case (candidates or not).
    """

    probabilities: np.ndarray
    truth: np.ndarray
    n_truth: int


def _reduce_case(member_probabilities: Sequence[np.ndarray], truth: np.ndarray, source: str) -> list[_ChannelCase]:
    """``M`` arrays ``(K, *S)`` and bool ``(K, *S)`` -> one :class:`_ChannelCase` per channel."""
    truth = np.asarray(truth).astype(bool, copy=False)
    for m, p in enumerate(member_probabilities):
        if np.shape(p) != truth.shape:
            raise DistillError(
                f"{source}: member {m} probabilities have shape {np.shape(p)}, ground truth {truth.shape}"
            )
    reduced = []
    for k in range(truth.shape[0]):
        channel = [np.asarray(p[k]) for p in member_probabilities]
        candidate = np.zeros(truth.shape[1:], dtype=bool)
        for p in channel:
            candidate |= p > THRESHOLD
        reduced.append(
            _ChannelCase(
                probabilities=np.stack([p[candidate] for p in channel], axis=1).astype(np.float64),
                truth=truth[k][candidate],
                n_truth=int(np.count_nonzero(truth[k])),
            )
        )
    return reduced


def _dice_of_candidates(case: _ChannelCase, candidates: np.ndarray) -> np.ndarray:
    """Dice of ``weighted mean > THRESHOLD`` for each weight vector; ``candidates`` is ``(C, M)``."""
    n_pred = np.empty(len(candidates))
    overlap = np.empty(len(candidates))
    block = max(1, _BLOCK_ELEMENTS // max(1, len(case.truth)))
    for start in range(0, len(candidates), block):
        predicted = case.probabilities @ candidates[start : start + block].T > THRESHOLD  # (n, c)
        n_pred[start : start + block] = np.count_nonzero(predicted, axis=0)
        overlap[start : start + block] = np.count_nonzero(predicted[case.truth], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * overlap / (n_pred + case.n_truth)
    # Empty masks follow the project's one declared policy (both empty -> 1, one empty -> 0).
    gt_empty = case.n_truth == 0
    for pred_empty in (True, False):
        fixed = policy_value("dice", gt_empty=gt_empty, pred_empty=pred_empty)
        if fixed is not None:
            dice[(n_pred == 0) == pred_empty] = fixed
    return dice


def _mean_dice(cases: Sequence[_ChannelCase], candidates: np.ndarray) -> np.ndarray:
    """``(C,)`` mean over cases of the Dice of each candidate weight vector."""
    return np.mean([_dice_of_candidates(case, candidates) for case in cases], axis=0)


def grid_steps(step: float) -> int:
    """How many steps of ``step`` make 1; ``step`` must divide 1."""
    if not 0 < step <= 1:
        raise ValueError(f"step must lie in (0, 1], got {step}")
    n = int(round(1.0 / step))
    if abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"step must divide 1 (e.g. 0.1, 0.05, 0.25), got {step}")
    return n


def simplex_grid(n_members: int, n_steps: int) -> np.ndarray:
    """Every weight vector with entries ``j / n_steps`` summing to 1: ``(C(n_steps + M - 1, M - 1), M)``."""
    rows = []
    # Stars and bars: M - 1 bar positions among n_steps + M - 1 slots give the M counts.
    for bars in itertools.combinations(range(n_steps + n_members - 1), n_members - 1):
        edges = (-1, *bars, n_steps + n_members - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(n_members)])
    return np.asarray(rows, dtype=np.float64) / n_steps


def _best(candidates: np.ndarray, scores: np.ndarray, uniform: np.ndarray) -> int:
    """Index of the highest score; among ties, the candidate closest to uniform."""
    tied = np.flatnonzero(scores >= scores.max() - DICE_TIE_TOLERANCE)
    distance = np.linalg.norm(candidates[tied] - uniform, axis=1)
    return int(tied[np.argmin(distance)])


def _search_exhaustive(cases: Sequence[_ChannelCase], n_members: int, n_steps: int) -> tuple[np.ndarray, float]:
    uniform = np.full(n_members, 1.0 / n_members)
    candidates = np.vstack([uniform, simplex_grid(n_members, n_steps)])
    scores = _mean_dice(cases, candidates)
    best = _best(candidates, scores, uniform)
    return candidates[best], float(scores[best])


def _coordinate_moves(current: np.ndarray, n_steps: int) -> np.ndarray:
    """Weight vectors with one member's weight set to each grid value ``j / n_steps``.

    The other members share the rest in their current proportions (equally if they had none),
    so every move stays on the simplex. Searching a whole coordinate line, not just a small
    step, crosses the flat stretches where thresholded Dice does not change.
    """
    moves = []
    for member in range(len(current)):
        others = np.delete(current, member)
        share = others / others.sum() if others.sum() > 0 else np.full(len(others), 1.0 / len(others))
        for value in np.arange(n_steps + 1) / n_steps:
            moves.append(np.insert(share * (1.0 - value), member, value))
    return np.asarray(moves)


def _search_coordinate_ascent(cases: Sequence[_ChannelCase], n_members: int, n_steps: int) -> tuple[np.ndarray, float]:
    uniform = np.full(n_members, 1.0 / n_members)
    current, score = uniform, float(_mean_dice(cases, uniform[None])[0])
    for _ in range(MAX_ASCENT_ROUNDS):
        moves = _coordinate_moves(current, n_steps)
        scores = _mean_dice(cases, moves)
        best = _best(moves, scores, uniform)
        if scores[best] <= score + DICE_TIE_TOLERANCE:
            break  # no strict improvement: stay (closer to uniform wins ties)
        current, score = moves[best], float(scores[best])
    return current, score


def _check_inputs(member_probabilities: Sequence[Sequence[np.ndarray]], ground_truth: Sequence[np.ndarray]) -> int:
    """Number of members; refuses empty or ragged input."""
    if not member_probabilities or len(member_probabilities) != len(ground_truth):
        raise DistillError(
            "weight fitting needs at least one case and one ground truth per case, got "
            f"{len(member_probabilities)} cases and {len(ground_truth)} ground truths"
        )
    counts = {len(members) for members in member_probabilities}
    if len(counts) != 1 or 0 in counts:
        raise DistillError(
            f"every case needs probabilities from the same (non-zero) number of members, got {sorted(counts)}"
        )
    channels = {np.shape(gt)[0] if np.ndim(gt) else 0 for gt in ground_truth}
    if len(channels) != 1:
        raise DistillError(f"ground truths differ in channel count: {sorted(channels)}")
    return counts.pop()


def _fit_reduced(per_case: Sequence[Sequence[_ChannelCase]], n_members: int, step: float) -> WeightFit:
    """Search weights channel by channel on reduced cases (``per_case[case][channel]``)."""
    n_steps = grid_steps(step)
    n_channels = len(per_case[0])
    exhaustive = n_members <= EXHAUSTIVE_MAX_MEMBERS
    uniform = np.full(n_members, 1.0 / n_members)
    weights = np.empty((n_members, n_channels))
    fitted = np.empty(n_channels)
    baseline = np.empty(n_channels)
    for k in range(n_channels):
        cases = [case[k] for case in per_case]
        search = _search_exhaustive if exhaustive else _search_coordinate_ascent
        weights[:, k], fitted[k] = search(cases, n_members, n_steps)
        baseline[k] = _mean_dice(cases, uniform[None])[0]
    return WeightFit(
        weights=weights,
        dice_fitted=fitted,
        dice_uniform=baseline,
        step=float(step),
        n_cases=len(per_case),
        search="exhaustive" if exhaustive else "coordinate_ascent",
    )


def fit_region_weights(
    member_probabilities: Sequence[Sequence[np.ndarray]], ground_truth: Sequence[np.ndarray], step: float = 0.1
) -> WeightFit:
    """Per-channel ensemble weights that maximise mean Dice over cases.

    Args:
        member_probabilities: ``[case][member]`` float ``(K, X, Y, Z)`` probabilities
            (shapes may differ between cases, not within one).
        ground_truth: ``[case]`` bool ``(K, X, Y, Z)`` region masks.
        step: grid step on the weight simplex; must divide 1.

    Returns:
        A :class:`WeightFit`; ``dice_fitted >= dice_uniform`` channel by channel, since uniform
        weights are always a candidate.
    """
    n_members = _check_inputs(member_probabilities, ground_truth)
    per_case = [
        _reduce_case(probs, gt, f"case {i}") for i, (probs, gt) in enumerate(zip(member_probabilities, ground_truth))
    ]
    return _fit_reduced(per_case, n_members, step)


# --------------------------------------------------------------------------- weights files


def save_weights(
    path: Path | str, fit: WeightFit, member_names: Sequence[str], channels: Sequence[str] = REGIONS
) -> Path:
    """Write a fit as JSON: member names, channel names, weights and the Dice it reached."""
    path = Path(path)
    weights = check_weights(fit.weights, len(member_names), len(channels), source=str(path))
    document = {
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "members": list(member_names),
        "channels": list(channels),
        "weights": {name: dict(zip(channels, row.tolist())) for name, row in zip(member_names, weights)},
        "dice_fitted": dict(zip(channels, np.asarray(fit.dice_fitted, dtype=float).tolist())),
        "dice_uniform": dict(zip(channels, np.asarray(fit.dice_uniform, dtype=float).tolist())),
        "step": fit.step,
        "n_cases": fit.n_cases,
        "search": fit.search,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def _read_weights_document(path: Path) -> dict[str, Any]:
    document = read_json_object(path, "ensemble weights file", "write it with `distill teacher-weights`")
    if document.get("format") != WEIGHTS_FORMAT:
        raise DistillError(f"{path}: not a Distill ensemble weights file (format {WEIGHTS_FORMAT!r} expected)")
    if document.get("version") != WEIGHTS_VERSION:
        raise DistillError(
            f"{path}: weights file version {document.get('version')!r}, this Distill reads version {WEIGHTS_VERSION}"
        )
    return document


def load_weights(path: Path | str, member_names: Sequence[str], channels: Sequence[str] | None = None) -> WeightFit:
    """Read a :func:`save_weights` file for exactly ``member_names`` (rows in that order).

    Raises:
        DistillError: missing or unreadable file, or member (or channel) names that differ
            from the ones the weights were fitted for.
    """
    path = Path(path)
    document = _read_weights_document(path)
    stored = list(document.get("members", []))
    if sorted(stored) != sorted(member_names) or len(set(stored)) != len(stored):
        raise DistillError(f"{path}: weights were fitted for members {stored}, not for {list(member_names)}")
    stored_channels = list(document.get("channels", []))
    if channels is not None and stored_channels != list(channels):
        raise DistillError(f"{path}: weights are for channels {stored_channels}, the ensemble has {list(channels)}")
    try:
        rows = [[float(document["weights"][name][c]) for c in stored_channels] for name in member_names]
        dice_fitted = [float(document["dice_fitted"][c]) for c in stored_channels]
        dice_uniform = [float(document["dice_uniform"][c]) for c in stored_channels]
        step, n_cases, search = float(document["step"]), int(document["n_cases"]), str(document["search"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DistillError(f"{path}: malformed ensemble weights file ({type(exc).__name__}: {exc})") from exc
    weights = check_weights(rows, len(member_names), len(stored_channels), source=str(path))
    return WeightFit(weights, np.asarray(dice_fitted), np.asarray(dice_uniform), step, n_cases, search)


# --------------------------------------------------------------------------- library entry point for the CLI


@dataclass
class TeacherWeightsConfig:
    """What ``distill teacher-weights`` needs.

    Attributes:
        members: constructed teachers with sigmoid channels WT, TC, ET.
        cases: validation cases with label maps.
        output: JSON file to write.
        label_convention: convention name or ``"auto"`` (detected from the labels and layout).
        step: grid step of the weight search.
    """

    members: Sequence[Teacher]
    cases: Sequence[Case]
    output: Path
    label_convention: str | LabelConvention = "auto"
    step: float = 0.1


@dataclass
class WeightFitResult:
    """What was fitted and where it was written.

    Attributes:
        fit: weights and Dice per channel.
        member_names: member labels (:func:`member_label`) in weight-row order.
        channels: region names in weight-column order.
        path: the JSON file written.
        convention: the label convention used for the ground truth.
    """

    fit: WeightFit
    member_names: tuple[str, ...]
    channels: tuple[str, ...]
    path: Path
    convention: str
    dice: dict[str, dict[str, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.dice = {
            c: {"fitted": float(self.fit.dice_fitted[k]), "uniform": float(self.fit.dice_uniform[k])}
            for k, c in enumerate(self.channels)
        }


def _resolve_case_convention(config: TeacherWeightsConfig) -> LabelConvention:
    if isinstance(config.label_convention, LabelConvention):
        return config.label_convention
    values: set[int] = set()
    for case in config.cases:
        values |= {int(v) for v in np.unique(case.labels)}
    first = config.cases[0]
    layout = first.files.layout if first.files is not None else None
    source = f"validation labels of {len(config.cases)} cases"
    return resolve_convention(config.label_convention, values, layout, source=source)


def _check_fit_members(members: Sequence[Teacher]) -> None:
    if not members:
        raise DistillError("teacher-weights needs at least one member teacher")
    infos = [m.info for m in members]
    _check_compatible(infos)
    if infos[0].output_kind != SIGMOID or tuple(infos[0].channels) != REGIONS:
        raise DistillError(
            f"teacher-weights fits region Dice and needs sigmoid members with channels {list(REGIONS)}; "
            f"{infos[0].name!r} has {infos[0].output_kind} channels {list(infos[0].channels)}"
        )


def fit_teacher_weights(config: TeacherWeightsConfig) -> WeightFitResult:
    """Run every member once per validation case, fit per-region weights, write them as JSON.

    Each case is reduced to its candidate voxels right after prediction, so memory holds one
    case's member maps at a time, not the whole validation set.
    """
    _check_fit_members(config.members)
    if not config.cases:
        raise DistillError("teacher-weights needs at least one validation case")
    missing = [c.case_id for c in config.cases if c.labels is None]
    if missing:
        raise DistillError(f"teacher-weights needs ground truth; cases without a label map: {missing[:5]}")
    grid_steps(config.step)  # refuse a bad step before the expensive predictions
    convention = _resolve_case_convention(config)
    per_case = []
    for case in config.cases:
        truth = convention.to_regions(case.labels, source=f"case {case.case_id}")
        probabilities = [member.predict(case).probabilities for member in config.members]
        per_case.append(_reduce_case(probabilities, truth, f"case {case.case_id}"))
    fit = _fit_reduced(per_case, len(config.members), config.step)
    names = tuple(member_label(m.info) for m in config.members)
    path = save_weights(config.output, fit, names, REGIONS)
    return WeightFitResult(fit=fit, member_names=names, channels=REGIONS, path=path, convention=convention.name)
