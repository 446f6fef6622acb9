"""udfs/report_tables.py: each table of the run report against a direct computation here."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from udfs.report_tables import (
    MINUTE_MS,
    OTHER,
    amount_distribution,
    dead_letters_by_stage,
    fraud_rate_by_category,
    headline,
    learning_curve,
    records_per_minute,
    report_window_ms,
    score_distribution,
    top_groups,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z


def scores(seed: int, n: int = 400) -> list[dict]:
    rng = random.Random(seed)
    return [{"model_key": rng.choice(["a", "b", "c", "d", "e", "f", "g"]), "score": rng.choice([0.5, rng.random()]),
             "label": rng.choice([0, 1, None, 0]), "event_time": T0 + rng.randrange(0, 3 * 3_600_000),
             "merchant_category": rng.choice(["fuel", "travel", "grocery"]),
             "amount": rng.choice([0.0, 0.005, 0.01, 1.0, 10.0, rng.uniform(0, 5000)]),
             "currency": rng.choice(["USD", "EUR", "EUR"])} for _ in range(n)]


def direct_log_loss(pairs):
    return sum(-math.log(min(max(p, 1e-15), 1 - 1e-15)) if y else -math.log(1 - min(max(p, 1e-15), 1 - 1e-15))
               for p, y in pairs) / len(pairs)


def direct_auc(pairs):
    positives = [p for p, y in pairs if y == 1]
    negatives = [p for p, y in pairs if y == 0]
    if not positives or not negatives:
        return None
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in positives for b in negatives) / (
        len(positives) * len(negatives))


def test_the_report_window_is_the_smallest_listed_size_giving_at_most_60_windows():
    assert report_window_ms([T0, T0 + 59 * MINUTE_MS]) == MINUTE_MS
    assert report_window_ms([T0, T0 + 60 * MINUTE_MS]) == 5 * MINUTE_MS
    assert report_window_ms([T0, T0 + 3 * 3_600_000]) == 5 * MINUTE_MS
    assert report_window_ms([T0, T0 + 30 * 86_400_000]) == 86_400_000
    assert report_window_ms([]) == MINUTE_MS


@pytest.mark.parametrize("seed", range(3))
def test_learning_curve_per_window_overall_and_for_the_top_keys(seed):
    data = scores(seed)
    window = 15 * MINUTE_MS
    table = learning_curve(data, window, top_keys=3)
    labelled = [s for s in data if s["label"] is not None]
    counts = {}
    for s in labelled:
        counts[s["model_key"]] = counts.get(s["model_key"], 0) + 1
    top = sorted(counts, key=lambda key: (-counts[key], key))[:3]
    assert list(dict.fromkeys(row[0] for row in table.rows)) == ["(all)", *top]
    for key, start, n, loss, auc in table.rows:
        pairs = [(s["score"], s["label"]) for s in labelled
                 if start <= s["event_time"] < start + window and key in ("(all)", s["model_key"])]
        assert n == len(pairs) > 0
        assert loss == pytest.approx(direct_log_loss(pairs), rel=1e-12)
        assert auc == (pytest.approx(direct_auc(pairs), abs=1e-12) if direct_auc(pairs) is not None else None)
    assert sum(row[2] for row in table.rows if row[0] == "(all)") == len(labelled)


def test_fraud_rate_by_category():
    data = scores(4)
    table = fraud_rate_by_category(data, 3_600_000)
    for category, start, n, frauds, rate in table.rows:
        labels = [s["label"] for s in data if s["merchant_category"] == category and s["label"] is not None
                  and start <= s["event_time"] < start + 3_600_000]
        assert (n, frauds, rate) == (len(labels), sum(labels), sum(labels) / len(labels))
    assert sum(row[2] for row in table.rows) == sum(s["label"] is not None for s in data)


def test_score_distribution_bins_of_width_one_twentieth():
    data = scores(5) + [{"score": 1.0, "label": 1}, {"score": 0.0, "label": 0}]
    table = score_distribution(data)
    assert len(table.rows) == 20
    for low, high, not_fraud, fraud in table.rows:
        inside = [s["label"] for s in data if s["label"] is not None
                  and (low <= s["score"] < high or (high == 1.0 and s["score"] == 1.0))]
        assert (not_fraud, fraud) == (inside.count(0), inside.count(1))


def test_amount_distribution_log_bins_hold_every_labelled_amount_once_per_currency():
    data = scores(6)
    table = amount_distribution(data)
    assert list(dict.fromkeys(row[0] for row in table.rows)) == ["EUR", "USD"]  # most labelled first
    for currency in ("EUR", "USD"):
        rows = [row[1:] for row in table.rows if row[0] == currency]
        assert rows[0][0] == 0.0
        for (low, high, *_), following in zip(rows, rows[1:]):
            assert high == pytest.approx(following[0]) and low < high
        for low, high, not_fraud, fraud in rows:
            inside = [s["label"] for s in data if s["label"] is not None and s["currency"] == currency
                      and low <= s["amount"] < high]
            assert (not_fraud, fraud) == (inside.count(0), inside.count(1)), (low, high)
    assert sum(row[3] + row[4] for row in table.rows) == sum(s["label"] is not None for s in data)


def test_top_groups_keeps_the_largest_and_names_the_rest_other():
    sizes = Counter({"a": 5, "b": 9, "c": 5, "d": 1})
    assert top_groups(sizes, 2) == {"b": "b", "a": "a", "c": OTHER, "d": OTHER}  # ties by name
    assert top_groups(sizes, 4) == {"b": "b", "a": "a", "c": "c", "d": "d"}
    assert fraud_rate_by_category([], 60_000).rows == []


def test_records_per_minute_covers_every_minute():
    data = [{"event_time": T0 + 5_000}, {"event_time": T0 + 59_999}, {"event_time": T0 + 3 * MINUTE_MS}]
    assert records_per_minute(data).rows == [(T0, 2), (T0 + MINUTE_MS, 0), (T0 + 2 * MINUTE_MS, 0),
                                             (T0 + 3 * MINUTE_MS, 1)]
    assert records_per_minute([]).rows == []


def test_dead_letters_by_stage_in_pipeline_order():
    letters = [{"stage": s} for s in ["clean", "decode", "clean", "features", "parse", "parse", "clean"]]
    assert dead_letters_by_stage(letters).rows == [("decode", 1), ("parse", 2), ("clean", 3), ("features", 1)]


def test_headline_figures():
    data = scores(7)
    figures = headline(data, [{"stage": "parse"}] * 3)
    pairs = [(s["score"], s["label"]) for s in data if s["label"] is not None]
    assert figures["records scored"] == len(data) and figures["records dead-lettered"] == 3
    assert figures["labelled scores"] == len(pairs) and figures["frauds among them"] == sum(y for _, y in pairs)
    assert figures["model keys"] == len({s["model_key"] for s in data})
    assert figures["log loss"] == pytest.approx(direct_log_loss(pairs), rel=1e-12)
    assert figures["ROC AUC"] == pytest.approx(direct_auc(pairs), abs=1e-12)
    assert figures["first event time"] == min(s["event_time"] for s in data)
    assert headline([], [])["log loss"] is None
