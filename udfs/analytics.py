"""Event-time windowed analytics over scored transactions: what a window is, when a record is
late for it, and the figures of a window and group (no Flink).

Times are epoch milliseconds. A window is [start, end), end exclusive. Tumbling windows of `size`
are sliding windows whose `slide` equals `size`; a sliding window starts at every multiple of
`slide` (from the epoch), so a record belongs to size / slide windows when slide divides size.

Event time is made deterministic per source split (a file, a Kafka partition): a split's watermark
is the largest event time seen so far in that split's arrival order minus `out_of_orderness`. A
window is emitted once, when the watermark passes its end plus `allowed_lateness` (watermark >=
end + allowed_lateness), and a record is late for each of its windows whose emission its own
split's watermark, at its arrival, had already reached. A late record still counts in its windows
not yet emitted. While no split is idle, the job's watermark is the minimum over splits, so what
is late depends only on each split's own order, not on how splits interleave.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, NamedTuple, Sequence

from udfs.metrics import log_loss, none_if_nan, roc_auc

ANALYTICS_SCHEMA_VERSION = 1


class WindowSpec(NamedTuple):
    """Windows of `size_ms` starting every `slide_ms` (tumbling: slide_ms == size_ms); both > 0."""

    size_ms: int
    slide_ms: int

    @property
    def name(self) -> str:
        """`tumbling-<size>ms` or `sliding-<size>ms-<slide>ms`, as the output lines name it."""
        if self.slide_ms == self.size_ms:
            return f"tumbling-{self.size_ms}ms"
        return f"sliding-{self.size_ms}ms-{self.slide_ms}ms"

    def starts(self, event_time: int) -> range:
        """Starts of the windows holding `event_time`, oldest first."""
        last = event_time - event_time % self.slide_ms
        # The oldest window holding event_time starts after event_time - size.
        first = last - ((self.size_ms - 1 - (event_time - last)) // self.slide_ms) * self.slide_ms
        return range(first, last + 1, self.slide_ms)


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
    """The running figures of one window and group; `add` a record, `merge` another partial."""

    transactions: int = 0
    frauds: int = 0
    score_sum: float = 0.0
    # currency -> [count, sum, max]
    amounts: dict[str, list] = field(default_factory=dict)
    accounts: set[str] = field(default_factory=set)
    # score and label of each labelled record, for the log loss and the exact ROC AUC
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, record: ScoredRecord) -> None:
        self.transactions += 1
        self.score_sum += record.score
        self.accounts.add(record.account)
        amount = self.amounts.get(record.currency)
        if amount is None:
            self.amounts[record.currency] = [1, record.amount, record.amount]
        else:
            amount[0] += 1
            amount[1] += record.amount
            amount[2] = max(amount[2], record.amount)
        if record.label is not None:
            self.frauds += record.label
            self.scores.append(record.score)
            self.labels.append(record.label)

    def merge(self, other: WindowFigures) -> None:
        self.transactions += other.transactions
        self.frauds += other.frauds
        self.score_sum += other.score_sum
        for currency, (count, total, largest) in other.amounts.items():
            mine = self.amounts.get(currency)
            if mine is None:
                self.amounts[currency] = [count, total, largest]
            else:
                mine[0] += count
                mine[1] += total
                mine[2] = max(mine[2], largest)
        self.accounts |= other.accounts
        self.scores += other.scores
        self.labels += other.labels

    def figures(self) -> dict[str, Any]:
        """The window's figures, JSON-ready: rates, means, log loss (nats) and ROC AUC (ties
        counting half) are null when they have nothing to average over (AUC also when the
        window's labels are all one class)."""
        labelled = len(self.labels)
        return {
            "transactions": self.transactions,
            "labelled_transactions": labelled,
            "fraud_count": self.frauds,
            "fraud_rate": self.frauds / labelled if labelled else None,
            "amount": {currency: {"sum": total, "mean": total / count, "max": largest}
                       for currency, (count, total, largest) in sorted(self.amounts.items())},
            "distinct_accounts": len(self.accounts),
            "mean_score": self.score_sum / self.transactions if self.transactions else None,
            "log_loss": none_if_nan(log_loss(self.scores, self.labels)),
            "roc_auc": none_if_nan(roc_auc(self.scores, self.labels)),
        }


def window_line(spec: WindowSpec, start: int, group_by: str, group: str, figures: WindowFigures) -> dict[str, Any]:
    """One analytics output line (before JSON encoding) for a window and group."""
    return {"schema_version": ANALYTICS_SCHEMA_VERSION, "window": spec.name, "window_start": start,
            "window_end": start + spec.size_ms, "group_by": group_by, "group": group, **figures.figures()}


class LateRecord(NamedTuple):
    """A record that arrived after some of its windows were emitted."""

    index: int  # its position in the arrivals
    window: str  # WindowSpec.name
    missed: list[tuple[int, int]]  # (window start, late_by_ms): watermark - (window end + allowed lateness)


def analyze(arrivals: Iterable[tuple[Hashable, ScoredRecord]], spec: WindowSpec, group_by: Sequence[str],
            out_of_orderness_ms: int, allowed_lateness_ms: int
            ) -> tuple[dict[tuple[int, str, str], WindowFigures], list[LateRecord]]:
    """The windows and late records of `arrivals`, (split, record) pairs in arrival order, by the
    rules of this module: (window start, group field, group value) -> the figures of the records
    that were not late for that window; and every record late for at least one window."""
    watermarks = SplitWatermarks(out_of_orderness_ms)
    windows: dict[tuple[int, str, str], WindowFigures] = {}
    late: list[LateRecord] = []
    for index, (split, record) in enumerate(arrivals):
        watermark = watermarks.observe(split, record.event_time)
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
