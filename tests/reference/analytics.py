"""The reference of windowed analytics: each split's watermark, the windows a record is late
for, and the figures of each window and group, computed from the records one by one by the rules
udfs/analytics.py states. The job's late records (udfs.analytics.late_records) and its window
operator (WindowAnalytics.java) are held to it; tests/analytics_reference.py applies it to a
job's inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, NamedTuple, Sequence

from udfs.analytics import WindowSpec
from udfs.metrics import labelled, log_loss, none_if_nan, roc_auc


class SplitWatermarks:
    """Each source split's watermark, from its records in arrival order: the largest event time
    seen in the split minus `out_of_orderness_ms` (None before its first record)."""

    def __init__(self, out_of_orderness_ms: int):
        self.out_of_orderness_ms = out_of_orderness_ms
        self.max_event_time: dict[Hashable, int] = {}

    def observe(self, split: Hashable, event_time: int) -> int:
        """Takes the split's next record; returns the split's watermark with it."""
        seen = self.max_event_time.get(split)
        if seen is None or event_time > seen:
            self.max_event_time[split] = seen = event_time
        return seen - self.out_of_orderness_ms

    def watermark(self, split: Hashable) -> int | None:
        seen = self.max_event_time.get(split)
        return None if seen is None else seen - self.out_of_orderness_ms


def missed_windows(spec: WindowSpec, event_time: int, watermark: int, allowed_lateness_ms: int) -> list[int]:
    """Starts of the windows of `event_time` already emitted at `watermark` (its split's, at the
    record's arrival): those with watermark >= end + allowed_lateness_ms."""
    return [start for start in spec.starts(event_time) if watermark >= start + spec.size_ms + allowed_lateness_ms]


class ScoredRecord(NamedTuple):
    """What analytics needs of one scored transaction."""

    event_time: int  # epoch ms
    groups: dict[str, str]  # group field -> value, e.g. {"merchant_category": "grocery", "country": "DE"}
    account: str  # the account's pseudonym
    amount: float
    currency: str
    score: float  # probability of fraud before learning, 0..1
    label: int | None  # 0 / 1, or None when unlabelled


@dataclass
class WindowFigures:
    """The figures of one window and group, from its records one by one: the reference that the
    job's window operator (jvm/src/main/java/riskstream/flink/WindowAnalytics.java) is tested against."""

    records: list[ScoredRecord] = field(default_factory=list)

    def add(self, record: ScoredRecord) -> None:
        self.records.append(record)

    @property
    def transactions(self) -> int:
        return len(self.records)

    def figures(self) -> dict[str, Any]:
        """The window's figures, JSON-ready: counts; fraud rate over the labelled records; amount
        sum, mean and max per currency; distinct accounts; mean score; log loss (nats, scores
        clipped as udfs.metrics.log_loss does) and ROC AUC (ties counting half) of the labelled
        records. A rate, mean or loss is null when it has nothing to average over, the AUC also
        when the window's labels are all one class."""
        records = self.records
        scores, labels = labelled((r.score, r.label) for r in records)
        amounts: dict[str, list[float]] = {}
        for r in records:
            amounts.setdefault(r.currency, []).append(r.amount)
        return {
            "transactions": len(records),
            "labelled_transactions": len(labels),
            "fraud_count": sum(labels),
            "fraud_rate": sum(labels) / len(labels) if labels else None,
            "amount": {currency: {"sum": sum(values), "mean": sum(values) / len(values), "max": max(values)}
                       for currency, values in sorted(amounts.items())},
            "distinct_accounts": len({r.account for r in records}),
            "mean_score": sum(r.score for r in records) / len(records) if records else None,
            "log_loss": none_if_nan(log_loss(scores, labels)),
            "roc_auc": none_if_nan(roc_auc(scores, labels)),
        }


class UnscoredRecord(NamedTuple):
    """A record that moves its split's watermark but is in no window: one dead-lettered whose
    event_time could still be read (epoch ms) when watermarks were taken."""

    event_time: int


class LateRecord(NamedTuple):
    """A record that arrived after some of its windows were emitted."""

    index: int  # its position in the arrivals
    window: str  # WindowSpec.name
    missed: list[tuple[int, int]]  # (window start, late_by_ms): watermark - (window end + allowed lateness)


def analyze(arrivals: Iterable[tuple[Hashable, ScoredRecord | UnscoredRecord]], spec: WindowSpec,
            group_by: Sequence[str], out_of_orderness_ms: int, allowed_lateness_ms: int
            ) -> tuple[dict[tuple[int, str, str], WindowFigures], list[LateRecord]]:
    """The windows and late records of `arrivals`, (split, record) pairs in arrival order, by the
    rules of this module: (window start, group field, group value) -> the figures of the records
    that were not late for that window; and every record late for at least one window."""
    watermarks = SplitWatermarks(out_of_orderness_ms)
    windows: dict[tuple[int, str, str], WindowFigures] = {}
    late: list[LateRecord] = []
    for index, (split, record) in enumerate(arrivals):
        watermark = watermarks.observe(split, record.event_time)
        if isinstance(record, UnscoredRecord):
            continue
        missed = missed_windows(spec, record.event_time, watermark, allowed_lateness_ms)
        if missed:
            late.append(LateRecord(index, spec.name, [
                (start, watermark - (start + spec.size_ms + allowed_lateness_ms)) for start in missed]))
        for start in spec.starts(record.event_time):
            if start in missed:
                continue
            for group_field in group_by:
                key = (start, group_field, record.groups[group_field])
                figures = windows.get(key)
                if figures is None:
                    windows[key] = figures = WindowFigures()
                figures.add(record)
    return windows, late

