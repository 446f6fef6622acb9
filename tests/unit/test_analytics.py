"""udfs/analytics.py: windows, per-split watermarks and lateness, and a window's figures, each
checked against a brute-force computation written here."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tests.analytics_reference import close
from udfs.analytics import (
    ScoredRecord,
    SplitWatermarks,
    WindowFigures,
    WindowSpec,
    analyze,
    missed_windows,
    window_line,
)


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


@pytest.mark.parametrize("seed", range(10))
def test_merged_partials_equal_one_pass(seed):
    rng = random.Random(seed)
    records = [record(t, label=rng.choice([None, 0, 1]), score=rng.random(), amount=rng.uniform(0, 500),
                      currency=rng.choice(["EUR", "USD"]), account=f"a{rng.randint(0, 9)}") for t in range(80)]
    whole = WindowFigures()
    for r in records:
        whole.add(r)
    merged = WindowFigures()
    cut = sorted(rng.sample(range(1, 80), 4))
    for part in (records[a:b] for a, b in zip([0, *cut], [*cut, 80])):
        partial = WindowFigures()
        for r in part:
            partial.add(r)
        merged.merge(partial)
    a, b = whole.figures(), merged.figures()
    for name in ("transactions", "labelled_transactions", "fraud_count", "distinct_accounts", "roc_auc"):
        assert a[name] == b[name]
    for name in ("mean_score", "log_loss", "fraud_rate"):
        assert a[name] == pytest.approx(b[name], rel=1e-12)
    for currency in a["amount"]:
        assert a["amount"][currency]["max"] == b["amount"][currency]["max"]
        assert a["amount"][currency]["sum"] == pytest.approx(b["amount"][currency]["sum"], rel=1e-12)


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


@pytest.mark.parametrize("seed", range(5))
def test_figures_of_many_windows_at_once_are_each_windows_own(seed):
    """window_figures over many windows (scores tied within and across windows, windows with one
    class or no labels) against udfs.metrics' pure-Python log loss and AUC, window by window."""
    from udfs.analytics import window_figures
    from udfs.metrics import labelled, log_loss, roc_auc

    rng = random.Random(seed)
    windows, records_of = [], []
    for _ in range(12):
        figures, records = WindowFigures(), []
        for t in range(rng.choice([0, 1, 2, 5, 40])):
            r = record(t, label=rng.choice([None, 0, 1] if rng.random() < 0.8 else [0]),
                       score=rng.choice([0.25, 0.5, rng.random()]), account=f"a{rng.randint(0, 9)}",
                       amount=rng.uniform(0, 100), currency=rng.choice(["EUR", "USD"]))
            figures.add(r)
            records.append(r)
        windows.append(figures)
        records_of.append(records)
    for figures, records in zip(window_figures(windows), records_of):
        scores, labels = labelled((r.score, r.label) for r in records)
        assert figures["transactions"] == len(records) and figures["labelled_transactions"] == len(labels)
        assert figures["distinct_accounts"] == len({r.account for r in records})
        for name, expected in (("log_loss", log_loss(scores, labels)), ("roc_auc", roc_auc(scores, labels))):
            if math.isnan(expected):
                assert figures[name] is None, name
            else:
                assert figures[name] == pytest.approx(expected, rel=1e-12, abs=1e-12), name


def test_window_line_names_window_group_and_figures():
    figures = WindowFigures()
    figures.add(record(12_000, category="fuel", label=1, score=0.7))
    line = window_line(WindowSpec(10_000, 10_000), 10_000, "merchant_category", "fuel", figures.figures())
    assert line["schema_version"] == 1 and line["window"] == "tumbling-10000ms"
    assert (line["window_start"], line["window_end"]) == (10_000, 20_000)
    assert (line["group_by"], line["group"]) == ("merchant_category", "fuel")
    assert line["transactions"] == 1 and line["fraud_rate"] == 1.0


# ------------------------------------------------- the job's side: batches as they come, windows as they are due


def batch_of(records: list[ScoredRecord], source_watermarks: list[int]):
    """A RecordBatch of scored records (their context, event time and label), each with its split's watermark."""
    from udfs.pipeline import ModelInput, RecordBatch, ScoreContext

    inputs = [ModelInput(r.groups["merchant_category"], f"t{r.account}-{r.event_time}", r.event_time, r.label, [], [],
                         ScoreContext(r.groups["merchant_category"], r.groups["country"], "web", r.amount, r.currency,
                                      r.account)) for r in records]
    # Not _replace: RecordBatch's __len__ counts records, which namedtuple's _replace takes for its fields.
    return RecordBatch(*tuple(RecordBatch.of(inputs))[:-1], np.array(source_watermarks, np.int64))


def random_splits(seed: int, per_split: int = 80) -> dict[str, list[ScoredRecord]]:
    rng = random.Random(seed)
    return {name: [record(max(0, t * 700 + rng.randint(-9_000, 1_000)), category=rng.choice("xyz"),
                          country=rng.choice(["DE", "FR"]), account=f"{name}{rng.randint(0, 20)}",
                          label=rng.choice([0, 1, None]), score=rng.random(), amount=rng.uniform(1, 100),
                          currency=rng.choice(["EUR", "USD"]))
                   for t in range(per_split)] for name in ("a", "b")}


def run_through_the_job_side(splits, specs, lateness, out_of_orderness, batch_size, restore_at=None):
    """Splits interleaved in batches through WindowAnalytics, as the job's window-analytics
    operator sees them: each batch with its records' split watermarks, the operator's watermark the
    minimum over splits, windows emitted as it advances, and what is kept stored as the operator
    stores it; optionally a restore from the stored state after `restore_at` batches (the records
    since the last emission are kept, as after a checkpoint). Returns (window lines, late lines)."""
    import orjson

    from udfs.analytics import NO_WATERMARK, ScoredColumns, WindowAnalytics, late_records

    group_by = ["merchant_category", "country"]
    analytics = WindowAnalytics(specs, group_by, lateness)
    stored: list[bytes] = []  # the pending-records list state
    marks = SplitWatermarks(out_of_orderness)
    lines, late = [], []
    positions = {name: 0 for name in splits}
    batches = 0
    operator_watermark = NO_WATERMARK
    while any(positions[name] < len(splits[name]) for name in splits):
        for name in splits:
            chunk = splits[name][positions[name]:positions[name] + batch_size]
            positions[name] += len(chunk)
            if not chunk:
                continue
            batch = batch_of(chunk, [marks.observe(name, r.event_time) for r in chunk])
            effective, batch_late = late_records(specs, lateness, batch, operator_watermark)
            late += [orjson.loads(line) for _, line in batch_late]
            columns = ScoredColumns.of(batch, np.array([r.score for r in chunk]), effective, group_by)
            never_late, _, kept = analytics.receive(ScoredColumns.from_bytes(columns.to_bytes()))
            assert never_late == []
            stored.append(kept.to_bytes())
            batches += 1
            if all(marks.watermark(n) is not None for n in splits):
                operator_watermark = min(marks.watermark(n) for n in splits)
                emitted, remaining = analytics.emit(operator_watermark)
                lines += [orjson.loads(line) for _, line in emitted]
                if remaining is not None:
                    stored = [remaining.to_bytes()] if len(remaining.event_times) else []
            if batches == restore_at:
                restored = WindowAnalytics(specs, group_by, lateness)
                restored.restore(analytics.emitted_through, [ScoredColumns.from_bytes(data) for data in stored])
                analytics = restored
    lines += [orjson.loads(line) for _, line in analytics.emit(2**63 - 1)[0]]
    return lines, late


@pytest.mark.parametrize("seed, batch_size, restore_at", [(1, 7, None), (2, 1, None), (3, 25, 5), (4, 10, 3)])
def test_batches_through_the_job_side_give_the_reference_windows_and_late_records(seed, batch_size, restore_at):
    splits = random_splits(seed)
    specs = [WindowSpec(10_000, 10_000), WindowSpec(12_000, 4_000)]
    lines, late = run_through_the_job_side(splits, specs, 1_500, 2_000, batch_size, restore_at=restore_at)
    arrivals = [(name, r) for name in splits for r in splits[name]]  # per split order is all that matters
    for index, spec in enumerate(specs):
        windows, expected_late = analyze(arrivals, spec, ["merchant_category", "country"], 2_000, 1_500)
        emitted = [line for line in lines if line["window"] == spec.name]
        keys = [(line["window_start"], line["group_by"], line["group"]) for line in emitted]
        assert len(keys) == len(set(keys)), "a window emitted twice"
        assert set(keys) == set(windows)
        for line in emitted:
            figures = windows[(line["window_start"], line["group_by"], line["group"])].figures()
            assert close({name: line[name] for name in figures}, figures), (line, figures)
        spec_late = sorted((line["event_time"], [(m["window_start"], m["late_by_ms"]) for m in line["missed"]])
                           for line in late if line["window"] == spec.name)
        assert spec_late == sorted((arrivals[x.index][1].event_time, x.missed) for x in expected_late)
    assert late, "the random splits have late records"


def test_a_record_for_a_window_already_emitted_is_late_whatever_its_effective_watermark():
    """Should a record reach the window operator for a window it already emitted (after a restore
    met an idle split), it is written as late there, not silently left out."""
    import orjson

    from udfs.analytics import ScoredColumns, WindowAnalytics

    analytics = WindowAnalytics([WindowSpec(10_000, 10_000)], ["country"], 0)
    first = [record(5_000), record(25_000)]
    analytics.receive(ScoredColumns.of(batch_of(first, [5_000, 25_000]), np.array([0.5, 0.5]),
                                       np.array([5_000, 25_000]), ["country"]))
    lines, _ = analytics.emit(25_000)
    assert [orjson.loads(line)["window_start"] for _, line in lines] == [0]
    late, due_times, _ = analytics.receive(
        ScoredColumns.of(batch_of([record(6_000)], [6_000]), np.array([0.5]), np.array([6_000]), ["country"]))
    assert due_times == set()
    assert [orjson.loads(line)["missed"] for _, line in late] == [
        [{"window_start": 0, "window_end": 10_000, "late_by_ms": 15_000}]]
