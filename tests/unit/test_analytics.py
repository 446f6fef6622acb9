"""udfs/analytics.py and its reference (tests/reference/analytics.py): windows, per-split
watermarks and lateness, and a window's figures, each
checked against a brute-force computation written here."""

from __future__ import annotations

import math
import random

import pytest

from tests.reference.analytics import ScoredRecord, SplitWatermarks, WindowFigures, analyze, missed_windows
from udfs.analytics import WindowSpec, late_records
from udfs.wire import NO_WATERMARK, analytics_header


def record(event_time: int, category: str = "grocery", label: int | None = None, score: float = 0.5,
           amount: float = 10.0, currency: str = "EUR", account: str = "a1", country: str = "DE") -> ScoredRecord:
    return ScoredRecord(event_time, {"merchant_category": category, "country": country}, account, amount, currency,
                        score, label)


@pytest.mark.parametrize("size, slide", [(10, 10), (10, 5), (10, 3), (7, 7), (60_000, 15_000), (5, 10)])
def test_window_starts_are_every_window_that_holds_the_time(size, slide):
    spec = WindowSpec(size, slide)
    for t in range(-40, 200):
        expected = [s for s in range(t - size - slide, t + 1) if s % slide == 0 and s <= t < s + size]
        assert list(spec.starts(t)) == expected, t


def test_window_names():
    assert WindowSpec(60_000, 60_000).name == "tumbling-60000ms"
    assert WindowSpec(60_000, 10_000).name == "sliding-60000ms-10000ms"


def test_a_splits_watermark_is_its_largest_event_time_so_far_minus_the_out_of_orderness():
    marks = SplitWatermarks(100)
    assert marks.watermark("a") is None
    assert [marks.observe("a", t) for t in (1000, 900, 1500, 1200)] == [900, 900, 1400, 1400]
    assert marks.observe("b", 50) == -50  # splits are apart
    assert marks.watermark("a") == 1400


def test_missed_windows_are_those_whose_end_plus_lateness_the_watermark_reached():
    spec = WindowSpec(10_000, 5_000)
    # event 12,000 is in [5,000, 15,000) and [10,000, 20,000)
    assert missed_windows(spec, 12_000, 14_999, 0) == []
    assert missed_windows(spec, 12_000, 15_000, 0) == [5_000]
    assert missed_windows(spec, 12_000, 15_000, 1) == []
    assert missed_windows(spec, 12_000, 20_000, 0) == [5_000, 10_000]


def test_figures_of_a_window():
    figures = WindowFigures()
    for r in [record(1, label=1, score=0.8, amount=100.0, account="a"),
              record(2, label=0, score=0.2, amount=20.0, account="b"),
              record(3, label=None, score=0.5, amount=5.0, currency="USD", account="a")]:
        figures.add(r)
    out = figures.figures()
    assert out["transactions"] == 3 and out["labelled_transactions"] == 2
    assert out["fraud_count"] == 1 and out["fraud_rate"] == 0.5
    assert out["amount"] == {"EUR": {"sum": 120.0, "mean": 60.0, "max": 100.0},
                             "USD": {"sum": 5.0, "mean": 5.0, "max": 5.0}}
    assert out["distinct_accounts"] == 2
    assert out["mean_score"] == pytest.approx(0.5)
    assert out["log_loss"] == pytest.approx((-math.log(0.8) - math.log(0.8)) / 2)
    assert out["roc_auc"] == 1.0


@pytest.mark.parametrize("seed", range(10))
def test_a_windows_auc_is_the_pairwise_probability_with_ties_as_half(seed):
    rng = random.Random(seed)
    figures = WindowFigures()
    pairs = [(rng.choice([0.1, 0.2, rng.random()]), rng.randint(0, 1)) for _ in range(40)] + [(0.5, 0), (0.5, 1)]
    for t, (score, label) in enumerate(pairs):
        figures.add(record(t, label=label, score=score))
    positives = [s for s, y in pairs if y == 1]
    negatives = [s for s, y in pairs if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    assert figures.figures()["roc_auc"] == pytest.approx(wins / (len(positives) * len(negatives)), abs=1e-12)


def test_figures_without_labels_have_null_rates():
    figures = WindowFigures()
    figures.add(record(1))
    out = figures.figures()
    assert out["fraud_rate"] is None and out["log_loss"] is None and out["roc_auc"] is None
    assert WindowFigures().figures()["mean_score"] is None


def test_an_in_order_stream_has_no_late_record():
    arrivals = [(split, record(t)) for t in range(0, 100_000, 700) for split in ("a", "b")]
    windows, late = analyze(arrivals, WindowSpec(10_000, 5_000), ["merchant_category"], 0, 0)
    assert late == []
    assert sum(f.transactions for f in windows.values()) == 2 * len(arrivals)  # each in two windows


def test_a_record_behind_its_splits_watermark_misses_the_emitted_windows_only():
    spec = WindowSpec(10_000, 10_000)
    arrivals = [("a", record(1_000)), ("a", record(25_000)), ("a", record(5_000)), ("a", record(21_000)),
                ("b", record(5_000))]  # b's own watermark is behind: not late
    windows, late = analyze(arrivals, spec, ["merchant_category"], 1_000, 2_000)
    # after 25,000 split a's watermark is 24,000 >= 10,000 + 2,000: [0, 10,000) was emitted
    assert [(x.index, x.missed) for x in late] == [(2, [(0, 24_000 - 12_000)])]
    assert windows[(0, "merchant_category", "grocery")].transactions == 2  # 1,000 (a) and 5,000 (b)
    assert windows[(20_000, "merchant_category", "grocery")].transactions == 2


@pytest.mark.parametrize("seed", range(5))
def test_the_late_set_does_not_depend_on_how_splits_interleave(seed):
    rng = random.Random(seed)
    splits = {name: [record(max(0, t * 1_000 + rng.randint(-8_000, 2_000)), account=f"{name}{t}",
                            label=rng.choice([0, 1]), score=rng.random())
                     for t in range(60)] for name in ("a", "b", "c")}
    spec = WindowSpec(10_000, 5_000)

    def run(order):
        positions = {name: 0 for name in splits}
        arrivals = []
        for name in order:
            arrivals.append((name, splits[name][positions[name]]))
            positions[name] += 1
        windows, late = analyze(arrivals, spec, ["merchant_category", "country"], 3_000, 1_000)
        late_set = {(arrivals[x.index][1].account, tuple(x.missed)) for x in late}
        return {key: figures.figures() for key, figures in windows.items()}, late_set

    order = [name for name in splits for _ in range(60)]
    first_windows, first_late = run(order)
    rng.shuffle(order)
    again_windows, again_late = run(order)
    assert first_late and first_late == again_late
    assert first_windows.keys() == again_windows.keys()
    for key in first_windows:
        assert first_windows[key]["transactions"] == again_windows[key]["transactions"]
        assert first_windows[key]["roc_auc"] == again_windows[key]["roc_auc"]  # ranks do not depend on order


# ------------------------------------------------- the scoring operator's side (udfs.analytics.late_records)


def batch_of(records: list[ScoredRecord], source_watermarks: list[int]):
    """A RecordBatch of scored records (their context, event time and label), each with its split's watermark."""
    import numpy as np

    from udfs.records import ModelInput, ScoreContext
    from udfs.wire import RecordBatch

    inputs = [ModelInput(r.groups["merchant_category"], f"t{r.event_time}", r.event_time, r.label, [], [],
                         ScoreContext(r.groups["merchant_category"], r.groups["country"], "web", r.amount, r.currency,
                                      r.account)) for r in records]
    # Not _replace: RecordBatch's __len__ counts records, which namedtuple's _replace takes for its fields.
    fields = list(RecordBatch.of(inputs))
    fields[RecordBatch._fields.index("source_watermarks")] = np.array(source_watermarks, np.int64)
    return RecordBatch(*fields)


@pytest.mark.parametrize("operator_watermark, late_rows", [(NO_WATERMARK, [1]), (20_000, [0, 1, 2])])
def test_the_scoring_side_finds_late_records_and_heads_its_output_with_them(operator_watermark, late_rows):
    """A record is late by the larger of its split's watermark and the scoring operator's; the
    header before the batch's score lines lists the late ones with that watermark (the window
    operator counts a listed record only in windows that watermark had not reached)."""
    import numpy as np
    import orjson

    batch = batch_of([record(5_000), record(3_000), record(15_000)], [4_000, 12_000, 12_000])
    watermarks, rows, late = late_records([WindowSpec(10_000, 10_000)], 0, batch, operator_watermark)
    assert rows == late_rows
    assert watermarks.tolist() == [max(w, operator_watermark) for w in (4_000, 12_000, 12_000)]
    lines = {txn_id: orjson.loads(line) for txn_id, line in late}
    assert sorted(lines) == sorted(f"t{batch.event_times[r]}" for r in late_rows)
    if operator_watermark == NO_WATERMARK:
        assert lines["t3000"]["missed"] == [{"window_start": 0, "window_end": 10_000, "late_by_ms": 2_000}]
    header = analytics_header(rows, watermarks)
    count = int(np.frombuffer(header[:4], "<i4")[0])
    assert count == len(late_rows) and len(header) == 4 + 12 * count
    assert np.frombuffer(header[4:4 + 4 * count], "<i4").tolist() == late_rows
    assert np.frombuffer(header[4 + 4 * count:], "<i8").tolist() == watermarks[late_rows].tolist()
