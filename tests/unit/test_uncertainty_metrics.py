"""Spearman's rho, AUROC and top-q capture on arrays small enough to work out by hand.

Expected values are derived in the comments, never recorded from the code; random arrays are
checked against scipy.stats.spearmanr and a brute force over every (positive, negative) pair.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from distill.eval.auroc import auroc
from distill.eval.spearman import spearman
from distill.eval.top_fraction_capture import top_fraction_capture

# --------------------------------------------------------------------------- Spearman


def test_spearman_without_ties_is_the_textbook_formula():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, x[::-1]) == pytest.approx(-1.0)
    # ranks of y: 1, 3, 2, 4; d = 0, 1, 1, 0: 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(x, np.array([10.0, 30.0, 20.0, 40.0])) == pytest.approx(0.8)


def test_spearman_gives_tied_values_their_average_rank():
    # x ranks 1.5, 1.5, 3, 4 (centred -1, -1, 0.5, 1.5); y ranks 1..4 (centred -1.5, -0.5, 0.5, 1.5)
    # sum of products 1.5 + 0.5 + 0.25 + 2.25 = 4.5; squares 4.5 and 5: 4.5 / sqrt(22.5) = sqrt(0.9)
    x = np.array([7.0, 7.0, 8.0, 9.0])
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, y) == pytest.approx(math.sqrt(0.9))


def test_spearman_counts_only_the_masked_voxels():
    # inside the mask the maps agree in order; the one voxel outside reverses it
    x = np.array([[1.0, 2.0], [3.0, 100.0]])
    y = np.array([[1.0, 2.0], [3.0, -100.0]])
    mask = np.array([[True, True], [True, False]])
    assert spearman(x, y, mask) == pytest.approx(1.0)
    assert spearman(x, y) < 0.5


def test_spearman_of_a_constant_map_is_nan_and_bad_input_is_refused():
    assert math.isnan(spearman(np.zeros(5), np.arange(5.0)))
    with pytest.raises(ValueError, match="at least 2 voxels"):
        spearman(np.arange(3.0), np.arange(3.0), np.array([False, True, False]))
    with pytest.raises(ValueError, match="selects no voxel"):
        spearman(np.arange(3.0), np.arange(3.0), np.zeros(3, bool))
    with pytest.raises(ValueError, match="shape"):
        spearman(np.arange(3.0), np.arange(4.0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        spearman(np.array([0.0, np.nan, 1.0]), np.arange(3.0))


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_on_random_maps_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=(5, 4, 3)).astype(np.float32)  # many ties
    y = x + rng.integers(-3, 4, size=x.shape)
    mask = rng.random(x.shape) < 0.7
    assert spearman(x, y, mask) == pytest.approx(spearmanr(x[mask], y[mask]).statistic, abs=1e-12)


# --------------------------------------------------------------------------- AUROC


def brute_force_auroc(score, target) -> float:
    """Every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
    pos, neg = score[target], score[~target]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_counts_the_ordered_pairs():
    # positives 0.35 and 0.8, negatives 0.1 and 0.4: 0.35 > 0.1, 0.35 < 0.4, 0.8 beats both: 3 of 4
    score = np.array([0.1, 0.4, 0.35, 0.8])
    target = np.array([False, False, True, True])
    assert auroc(score, target) == pytest.approx(0.75)
    assert auroc(-score, target) == pytest.approx(0.25)  # the reversed score ranks the other way
    assert auroc(target.astype(float), target) == 1.0


def test_auroc_counts_a_tie_as_half():
    # positives score 1 and 2, negatives 1 and 1: (0.5 + 0.5) for the first, 2 for the second: 3 of 4
    assert auroc(np.array([1.0, 1.0, 1.0, 2.0]), np.array([0, 1, 0, 1])) == pytest.approx(0.75)
    # a constant score ties every pair: exactly chance
    assert auroc(np.full(6, 0.3), np.array([1, 0, 0, 1, 0, 0])) == 0.5


def test_auroc_without_positives_or_negatives_is_nan_and_masks_apply():
    assert math.isnan(auroc(np.arange(4.0), np.zeros(4, bool)))
    assert math.isnan(auroc(np.arange(4.0), np.ones(4, bool)))
    # the mask drops the only positive: undefined
    assert math.isnan(auroc(np.arange(4.0), np.array([0, 0, 0, 1]), np.array([1, 1, 1, 0], bool)))
    # the mask drops the negative that outscored the positive: 1
    score, target = np.array([5.0, 1.0, 3.0]), np.array([False, False, True])
    assert auroc(score, target) == 0.5 and auroc(score, target, np.array([False, True, True])) == 1.0
    with pytest.raises(ValueError, match="NaN or infinite"):
        auroc(np.array([np.inf, 0.0]), np.array([1, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_the_brute_force_on_random_maps_with_ties(seed):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 5, size=(4, 5, 3)).astype(np.float64) / 4
    target = rng.random(score.shape) < 0.3
    mask = rng.random(score.shape) < 0.8
    assert auroc(score, target, mask) == pytest.approx(brute_force_auroc(score[mask], target[mask]), abs=1e-12)


# --------------------------------------------------------------------------- top-q capture


def test_capture_without_ties():
    # 20 voxels scored 0..19, 10 % budget = 2 voxels (scores 19 and 18); positives at 19, 5, 0: 1 of 3
    score = np.arange(20.0)
    target = np.zeros(20, bool)
    target[[19, 5, 0]] = True
    assert top_fraction_capture(score, target, fraction=0.1) == pytest.approx(1 / 3)
    assert top_fraction_capture(score, target, fraction=1.0) == 1.0


def test_capture_shares_the_slots_of_voxels_tied_at_the_cutoff():
    # 10 voxels, 20 % = 2 slots. Score 3 (positive) is flagged; three voxels tie at 2 for the
    # one slot left, one of them positive: it counts 1/3. Caught 1 + 1/3 of 2 positives = 2/3.
    score = np.array([3.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    target = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    assert top_fraction_capture(score, target, fraction=0.2) == pytest.approx(2 / 3)
    # the same voxels in another order give the same value (no dependence on tie-breaking)
    order = np.random.default_rng(0).permutation(10)
    assert top_fraction_capture(score[order], target[order], fraction=0.2) == pytest.approx(2 / 3)


def test_capture_is_the_average_over_every_order_of_the_tied_voxels():
    score = np.array([5.0, 4.0, 4.0, 4.0, 4.0, 1.0, 0.0, 0.0])
    target = np.array([0, 1, 1, 0, 0, 1, 0, 1], bool)
    k = 3  # ceil(0.3 * 8) = 3: voxel 0 plus two of the four tied at 4
    tied = [1, 2, 3, 4]
    orders = list(itertools.permutations(tied))
    expected = np.mean([(target[0] + target[list(order[: k - 1])].sum()) / target.sum() for order in orders])
    assert top_fraction_capture(score, target, fraction=0.3) == pytest.approx(expected)
    assert expected == pytest.approx((2 * 2 / 4) / 4)  # by hand: two tied positives share 2 of 4 slots, of 4


def test_a_constant_score_captures_the_chance_level():
    # 20 voxels, 5 % = 1 slot shared by all 20: each of the 4 positives counts 1/20; 0.2 of 4 = 0.05
    target = np.zeros(20, bool)
    target[:4] = True
    assert top_fraction_capture(np.zeros(20), target, fraction=0.05) == pytest.approx(0.05)


def test_the_budget_is_not_inflated_by_floating_point():
    # 0.07 * 100 is 7.000000000000001 in floating point: the budget is 7 voxels, so 7 of the 8
    # top-scored positives are caught (a budget of 8 would catch all of them)
    score = np.arange(100.0)
    target = score >= 92
    assert top_fraction_capture(score, target, fraction=0.07) == pytest.approx(7 / 8)
    # a budget that is not whole rounds up: ceil(0.05 * 30) = 2 of the top 3 positives
    assert top_fraction_capture(np.arange(30.0), np.arange(30) >= 27, fraction=0.05) == pytest.approx(2 / 3)


def test_capture_edge_cases():
    assert math.isnan(top_fraction_capture(np.arange(5.0), np.zeros(5, bool)))
    # the mask limits both the budget and the positives: 2 voxels inside, 50 % = 1, the positive scores highest
    score, target = np.array([9.0, 1.0, 2.0]), np.array([True, False, True])
    assert top_fraction_capture(score, target, np.array([False, True, True]), fraction=0.5) == 1.0
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction must lie in"):
            top_fraction_capture(score, target, fraction=fraction)
    with pytest.raises(ValueError, match="selects no voxel"):
        top_fraction_capture(score, target, np.zeros(3, bool))
