"""Paired bootstrap differences, on cases small enough to work out by hand."""

import numpy as np
import pytest

from distill.eval.paired import paired_difference, retention


def test_a_constant_difference_has_a_zero_width_interval():
    a = np.array([[0.7, 0.8], [0.5, 0.6], [0.9, 0.9]])
    result = paired_difference(a, a - 0.1)
    assert result.mean == pytest.approx(0.1)
    assert result.low == pytest.approx(0.1) and result.high == pytest.approx(0.1)
    assert result.verdict == "A better" and result.excludes_zero


def test_two_cases_of_opposite_sign_span_both_extremes():
    # Resampling 2 cases gives means -1, 0, +1 with probabilities 1/4, 1/2, 1/4: the 95 % interval is [-1, 1].
    result = paired_difference([1.0, 0.0], [0.0, 1.0], n_boot=20_000)
    assert result.mean == 0.0 and result.low == -1.0 and result.high == 1.0
    assert result.verdict == "no difference shown"


def test_seeds_are_resampled_within_cases():
    # One case, two seeds with differences 0 and 1: resampled means are 0, 0.5, 1 (1/4, 1/2, 1/4).
    result = paired_difference([[1.0, 1.0]], [[1.0, 0.0]], n_boot=20_000, level=0.4)
    assert result.mean == 0.5 and result.low == 0.5 and result.high == 0.5  # the middle 40 % is all 0.5
    assert (result.n_cases, result.n_seeds) == (1, 2)


def test_the_interval_is_reproducible_by_seed():
    rng = np.random.default_rng(3)
    a, b = rng.random((10, 2)), rng.random((10, 2))
    assert paired_difference(a, b, seed=5) == paired_difference(a, b, seed=5)


@pytest.mark.parametrize(
    "a, b, message",
    [
        ([[1.0, 2.0]], [[1.0]], "same cases and seeds"),
        ([np.nan], [1.0], "finite"),
        (np.ones((2, 2, 2)), np.ones((2, 2, 2)), "shape"),
    ],
)
def test_bad_inputs_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(a, b)


def test_retention_of_an_equal_student_is_one_and_of_a_half_student_is_half():
    teacher = np.array([0.8, 0.6, 0.4])
    same = retention(np.stack([teacher, teacher], axis=1), teacher)
    assert same.mean == pytest.approx(1.0) and same.low == pytest.approx(1.0) and same.high == pytest.approx(1.0)
    half = retention(teacher / 2, teacher)
    assert half.mean == pytest.approx(0.5) and half.low == pytest.approx(0.5)
