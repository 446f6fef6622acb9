"""The prequential metrics of `riskstream evaluate` (udfs/evaluation.py), each against an
independent, plain computation on small inputs, and the reading of a stream with the job's code."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import orjson
import pytest

from streaming.config import load_settings
from streaming.config.from_settings import transaction_reader
from udfs.evaluation import (
    average_precision,
    base_rate_part_metrics,
    base_rate_scores,
    expected_calibration_error,
    log_loss,
    part_metrics,
    read_stream,
    roc_auc,
    roc_auc_thresholds,
    rolling_curve,
)

PROJECT = Path(__file__).resolve().parents[2]


def brute_force_auc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2."""
    positives = [s for s, y in zip(scores, labels) if y == 1]
    negatives = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def river_style_auc(scores, labels, thresholds) -> float:
    """The ROC curve at each cut t (flagged: score > t), point by point, and the trapezoid rule,
    as River's ROCAUC describes it."""
    cuts = [i / (thresholds - 1) for i in range(thresholds)]
    cuts[0] -= 1e-7
    cuts[-1] += 1e-7
    positives = sum(labels)
    negatives = len(labels) - positives
    tpr = [sum(1 for s, y in zip(scores, labels) if y == 1 and s > t) / positives for t in cuts]
    fpr = [sum(1 for s, y in zip(scores, labels) if y == 0 and s > t) / negatives for t in cuts]
    return -sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(thresholds - 1))


def brute_force_average_precision(scores, labels) -> float:
    """The mean, over the positives, of the precision among the records scored at least as high."""
    precisions = []
    for s, y in zip(scores, labels):
        if y == 1:
            at_least = [label for score, label in zip(scores, labels) if score >= s]
            precisions.append(sum(at_least) / len(at_least))
    return sum(precisions) / len(precisions)


def brute_force_ece(scores, labels, bins) -> float:
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [(s, y) for s, y in zip(scores, labels) if low <= s < high or (b == bins - 1 and s == 1.0)]
        if members:
            gap = abs(sum(s for s, _ in members) / len(members) - sum(y for _, y in members) / len(members))
            total += len(members) / len(scores) * gap
    return total


def noisy_scores(seed: int, n: int, digits: int | None = 2) -> tuple[list[float], list[int]]:
    rng = random.Random(seed)
    labels = [rng.randint(0, 1) for _ in range(n)]
    labels[0], labels[1] = 0, 1
    scores = [min(1.0, max(0.0, rng.gauss(0.4 + 0.2 * y, 0.25))) for y in labels]
    return ([round(s, digits) for s in scores] if digits is not None else scores), labels


@pytest.mark.parametrize("seed", range(6))
def test_threshold_auc_matches_the_curve_taken_point_by_point(seed):
    scores, labels = noisy_scores(seed, 150, digits=None)
    assert roc_auc_thresholds(scores, labels, 50) == pytest.approx(river_style_auc(scores, labels, 50), abs=1e-12)
    assert roc_auc_thresholds(scores, labels, 1000) == pytest.approx(river_style_auc(scores, labels, 1000), abs=1e-12)


def test_threshold_auc_is_the_exact_auc_when_scores_lie_on_the_cuts():
    # Each score a cut point: the curve then has a point at every distinct score, as the exact AUC has.
    rng = random.Random(3)
    labels = [rng.randint(0, 1) for _ in range(400)]
    scores = [rng.randint(0, 19) * 50 / 999 for _ in labels]  # 0 to 950 / 999
    assert roc_auc_thresholds(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_matches_the_mean_precision_at_each_positive(seed):
    scores, labels = noisy_scores(seed, 200)  # rounded: many ties
    assert average_precision(scores, labels) == pytest.approx(brute_force_average_precision(scores, labels),
                                                              abs=1e-12)


def test_average_precision_of_known_cases():
    # scikit-learn's documented example: 0.8333...
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6, abs=1e-12)
    assert average_precision([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert math.isnan(average_precision([0.2, 0.3], [0, 0]))


@pytest.mark.parametrize("seed", range(6))
def test_expected_calibration_error_matches_the_binned_gaps(seed):
    scores, labels = noisy_scores(seed, 300, digits=1)  # many scores on bin edges, 1.0 included
    assert 1.0 in scores
    for bins in (10, 7):
        assert expected_calibration_error(scores, labels, bins) == pytest.approx(
            brute_force_ece(scores, labels, bins), abs=1e-12)


def test_expected_calibration_error_of_known_cases():
    assert expected_calibration_error([0.25] * 4, [1, 0, 1, 0]) == pytest.approx(0.25)
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0
    assert math.isnan(expected_calibration_error([], []))


def test_metrics_are_nan_without_both_classes():
    for metric in (roc_auc, roc_auc_thresholds):
        assert math.isnan(metric([0.1, 0.7], [1, 1]))
        assert math.isnan(metric([0.1, 0.7], [0, 0]))
    assert math.isnan(average_precision([0.1, 0.7], [0, 0]))
    assert average_precision([0.1, 0.7], [1, 1]) == 1.0  # every flagged record is a positive


def test_parts_take_the_labelled_records_from_their_start():
    scores = [0.9, 0.2, 0.8, 0.3, 0.6, 0.1]
    labels = [1, 0, -1, 0, 1, 1]
    positions = [0, 1, 3, 4, 6, 7]  # records 2 and 5 were dead-lettered
    parts = part_metrics(scores, labels, positions, {"all": 0, "late": 4})
    assert parts["all"]["log_loss"] == pytest.approx(log_loss([0.9, 0.2, 0.3, 0.6, 0.1], [1, 0, 0, 1, 1]))
    assert parts["late"]["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.6) + math.log(0.1)) / 3)
    base = base_rate_part_metrics(labels, positions, {"late": 4})["late"]
    assert base["log_loss"] == pytest.approx(-(math.log(1 / 3) + 2 * math.log(2 / 3)) / 3)
    assert list(base_rate_scores([1, 0, 0, 0])) == [0.25] * 4


def test_rolling_curve_takes_the_last_window_at_each_end():
    scores, labels = noisy_scores(1, 500, digits=None)
    rows = rolling_curve(scores, labels, window=100, points=5)
    assert [row[0] for row in rows] == [100, 200, 300, 400, 500]
    end, size, loss, auc = rows[2]
    assert size == 100
    assert loss == pytest.approx(log_loss(scores[200:300], labels[200:300]))
    assert auc == pytest.approx(river_style_auc(scores[200:300], labels[200:300], 1000), abs=1e-12)


def test_the_stream_is_read_with_the_job_code_and_keeps_each_record_position(tmp_path):
    settings = load_settings(PROJECT / "conf" / "local.yaml")
    good = {"txn_id": "t", "event_time": 1_700_000_000_000, "account_id": "a", "merchant_category": "fuel",
            "country": "US", "channel": "web", "amount": 10.0, "is_fraud": 1,
            "features": {name: 1.0 for name in ("txn_count_1h", "txn_count_24h", "amount_to_avg_ratio",
                                                "minutes_since_last_txn", "distinct_merchants_24h",
                                                "account_age_days", "failed_logins_24h", "device_risk_score",
                                                "distance_from_home_km", "new_device")}}
    lines = []
    for i in range(7):
        record = {**good, "txn_id": f"t{i}"}
        if i in (2, 5):
            del record["country"]
        lines.append(orjson.dumps(record))
    lines.insert(4, b"not json")
    chunks, summary = read_stream(transaction_reader(settings), lines, chunk=3)
    assert summary.records_read == 8
    assert dict(summary.dead_letters) == {"clean": 2, "parse": 1}
    assert [txn for chunk in chunks for txn in chunk.batch.txn_ids] == ["t0", "t1", "t3", "t4", "t6"]
    assert np.concatenate([chunk.positions for chunk in chunks]).tolist() == [0, 1, 3, 5, 7]
