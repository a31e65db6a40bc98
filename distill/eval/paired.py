"""Paired differences between two methods scored on the same cases, with a bootstrap interval.

With a handful of cases, "both seeds agree" says nothing about generalisation: seeds measure
training noise, cases measure how a method carries to unseen patients. This follows the
two-stage (hierarchical) bootstrap for clustered data (Davison & Hinkley, *Bootstrap Methods
and their Application*, 1997, section 3.8): resample cases with replacement, then, within
each drawn case, resample its seeds with replacement, and average. The percentile interval of
those means is reported beside the observed mean difference.

Shapes: ``scores_a`` and ``scores_b`` are ``(n_cases, n_seeds)`` arrays of one metric (e.g.
mean Dice over WT/TC/ET) for methods A and B on the same cases and seeds; the difference is
``A - B``. A 1-D input is read as one seed per case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``A - B`` over cases (and seeds) with its bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    n_cases: int
    n_seeds: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def verdict(self) -> str:
        """``"A better"``, ``"B better"`` or ``"no difference shown"`` at the interval's level."""
        if self.low > 0:
            return "A better"
        if self.high < 0:
            return "B better"
        return "no difference shown"

    def to_dict(self) -> dict[str, float | int | str]:
        return {"mean": round(self.mean, 4), "low": round(self.low, 4), "high": round(self.high, 4),
                "n_cases": self.n_cases, "n_seeds": self.n_seeds, "level": self.level,
                "verdict": self.verdict}  # fmt: skip


def _as_cases_by_seeds(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"scores must be (n_cases,) or (n_cases, n_seeds), got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (apply the empty-mask policy before comparing)")
    return scores


def paired_difference(scores_a, scores_b, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> PairedDifference:
    """Mean paired difference ``A - B`` and its two-stage bootstrap percentile interval.

    Args:
        scores_a, scores_b: ``(n_cases, n_seeds)`` (or ``(n_cases,)``) scores of the same cases
            and seeds, in the same order.
        n_boot: bootstrap resamples.
        level: coverage of the interval (0.95 gives the 2.5th and 97.5th percentiles).
        seed: seed of the resampling, so a report is reproducible.
    """
    a, b = _as_cases_by_seeds(scores_a), _as_cases_by_seeds(scores_b)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same cases and seeds, got shapes {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    diff = a - b
    n_cases, n_seeds = diff.shape
    rng = np.random.default_rng(seed)
    cases = rng.integers(0, n_cases, size=(n_boot, n_cases))
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_cases, n_seeds))
    resampled = diff[cases[..., None], seeds].mean(axis=(1, 2))
    tail = (1 - level) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return PairedDifference(float(diff.mean()), float(low), float(high), n_cases, n_seeds, level)


def retention(student, teacher, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> PairedDifference:
    """Student's mean score as a fraction of the teacher's on the same cases, with the interval
    of that ratio under the same two-stage resampling (``mean`` = mean(student) / mean(teacher)).

    ``student`` is ``(n_cases, n_seeds)``; ``teacher`` is ``(n_cases,)`` (one teacher per case).
    """
    s = _as_cases_by_seeds(student)
    t = _as_cases_by_seeds(teacher)[:, 0]
    if t.shape[0] != s.shape[0]:
        raise ValueError(f"student and teacher need the same cases, got {s.shape[0]} and {t.shape[0]}")
    if t.mean() <= 0:
        raise ValueError("the teacher's mean score must be positive to express retention")
    n_cases, n_seeds = s.shape
    rng = np.random.default_rng(seed)
    cases = rng.integers(0, n_cases, size=(n_boot, n_cases))
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_cases, n_seeds))
    teacher_means = t[cases].mean(axis=1)
    ratios = s[cases[..., None], seeds].mean(axis=(1, 2)) / np.where(teacher_means > 0, teacher_means, np.nan)
    tail = (1 - level) / 2
    low, high = np.nanquantile(ratios, [tail, 1 - tail])
    return PairedDifference(float(s.mean() / t.mean()), float(low), float(high), n_cases, n_seeds, level)
