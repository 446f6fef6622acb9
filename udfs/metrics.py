"""Prequential quality metrics over (score, label) pairs (pure Python)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

# Scores are clipped away from 0 and 1 so one confident mistake gives a large, finite loss.
SCORE_CLIP = 1e-15


def log_loss(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Mean negative log-likelihood (natural log) of binary `labels` under `scores`; nan if empty."""
    if not scores:
        return math.nan
    total = 0.0
    for p, y in zip(scores, labels):
        p = min(max(p, SCORE_CLIP), 1 - SCORE_CLIP)
        total -= math.log(p) if y == 1 else math.log(1 - p)
    return total / len(scores)


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve in [0, 1] (ties count half), by the rank-sum statistic;
    nan when only one class is present."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = sorted(range(len(scores)), key=scores.__getitem__)
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average_rank = (i + j) / 2 + 1  # ranks are 1-based; tied scores share their mean rank
        rank_sum += average_rank * sum(labels[order[k]] for k in range(i, j + 1))
        i = j + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def none_if_nan(value: float) -> float | None:
    """`value`, or None where a metric above is nan (undefined), for JSON and CSV output."""
    return None if math.isnan(value) else value


def labelled(pairs: Iterable[tuple[float, int | None]]) -> tuple[list[float], list[int]]:
    """The (scores, labels) of the pairs that have a label."""
    scores: list[float] = []
    labels: list[int] = []
    for score, label in pairs:
        if label is not None:
            scores.append(score)
            labels.append(label)
    return scores, labels
