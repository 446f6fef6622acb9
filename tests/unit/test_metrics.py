"""roc_auc, log_loss and labelled (udfs/metrics.py)."""

from __future__ import annotations

import math
import random

import pytest

from udfs.metrics import labelled, log_loss, roc_auc


def brute_force_auc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2."""
    positives = [s for s, y in zip(scores, labels) if y == 1]
    negatives = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("seed", range(8))
def test_roc_auc_matches_the_pairwise_count(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 300)
    # rounding makes many ties; a weak signal keeps the AUC away from 0.5 and 1
    labels = [rng.randint(0, 1) for _ in range(n)]
    labels[0], labels[1] = 0, 1
    scores = [round(min(1.0, max(0.0, rng.gauss(0.4 + 0.2 * y, 0.2))), 1) for y in labels]
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


def test_roc_auc_matches_the_pairwise_count_without_ties_and_with_rare_positives():
    rng = random.Random(99)
    labels = [1 if rng.random() < 0.03 else 0 for _ in range(2000)]
    scores = [rng.random() + 0.3 * y for y in labels]
    assert 0 < sum(labels) < len(labels)
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("scores, labels, expected", [
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
])
def test_roc_auc_of_small_known_cases(scores, labels, expected):
    assert roc_auc(scores, labels) == expected


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], [0], []])
def test_roc_auc_is_nan_with_only_one_class(labels):
    assert math.isnan(roc_auc([0.5] * len(labels), labels))


@pytest.mark.parametrize("seed", range(4))
def test_log_loss_matches_the_direct_formula(seed):
    rng = random.Random(seed)
    labels = [rng.randint(0, 1) for _ in range(200)]
    scores = [rng.uniform(0.01, 0.99) for _ in labels]
    expected = -sum(y * math.log(p) + (1 - y) * math.log(1 - p) for p, y in zip(scores, labels)) / len(labels)
    assert log_loss(scores, labels) == pytest.approx(expected, rel=1e-12)


def test_log_loss_of_a_confident_mistake_is_large_but_finite():
    value = log_loss([0.0, 1.0], [1, 0])
    assert math.isfinite(value)
    assert value > 30  # -ln(1e-15) is about 34.5


def test_log_loss_of_perfect_scores_is_near_zero():
    assert 0 <= log_loss([1.0, 0.0], [1, 0]) < 1e-12


def test_log_loss_is_nan_when_empty():
    assert math.isnan(log_loss([], []))


def test_labelled_keeps_only_pairs_with_a_label():
    pairs = [(0.1, 0), (0.2, None), (0.3, 1), (0.4, None), (0.5, 0)]
    assert labelled(pairs) == ([0.1, 0.3, 0.5], [0, 1, 0])
