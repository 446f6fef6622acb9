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
from typing import TYPE_CHECKING, Any, Hashable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import orjson

from udfs.metrics import labelled, log_loss, none_if_nan, roc_auc

if TYPE_CHECKING:
    from udfs.pipeline import RecordBatch

ANALYTICS_SCHEMA_VERSION = 1

# The watermark before any event time is known (Java's Long.MIN_VALUE, as Flink has it).
NO_WATERMARK = -2**63


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

    @property
    def windows_per_record(self) -> int:
        """How many windows a time can fall in: size / slide, rounded up."""
        return -(-self.size_ms // self.slide_ms)

    def window_starts(self, event_times: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`starts` for an array of times (int64, epoch ms): for k = 0 .. windows_per_record - 1,
        (the start of each time's k-th newest window, whether that window holds the time)."""
        newest = event_times - event_times % self.slide_ms
        for k in range(self.windows_per_record):
            starts = newest - k * self.slide_ms
            yield starts, starts > event_times - self.size_ms


class Windowing(NamedTuple):
    """The windows a job computes: each spec's windows for each group field; a window is emitted
    when the watermark reaches its end plus `allowed_lateness_ms` (>= 0)."""

    specs: tuple[WindowSpec, ...]
    group_by: tuple[str, ...]
    allowed_lateness_ms: int


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


# The RecordBatch column of each field windows can be grouped by.
GROUP_COLUMNS = {"merchant_category": "categories", "country": "countries", "channel": "channels",
                 "currency": "currencies"}


def analytics_header(late_rows: Sequence[int], watermarks: np.ndarray) -> bytes:
    """What the window operator needs besides a scored batch's score lines, put before them in the
    scoring operator's output bundle (AnalyticsHeader.java documents the layout and removes it for
    the scores sinks): the positions of the records found late (`late_records`) and their effective
    watermarks (`watermarks`: the whole batch's, epoch ms); a record not listed was late for none of
    its windows. Little-endian int32 count, int32 positions, int64 watermarks."""
    rows = np.asarray(late_rows, "<i4")
    return b"".join((np.array([len(rows)], "<i4").tobytes(), rows.tobytes(),
                     np.asarray(watermarks, "<i8")[rows].tobytes()))


def _missed(spec: WindowSpec, event_times: np.ndarray, watermarks: np.ndarray, allowed_lateness_ms: int
            ) -> dict[int, list[tuple[int, int]]]:
    """Record position -> [(window start, late_by_ms)] of the windows of `spec` each record is late
    for at `watermarks` (due time reached)."""
    missed: dict[int, list[tuple[int, int]]] = {}
    for starts, holds in spec.window_starts(event_times):
        due = starts + spec.size_ms + allowed_lateness_ms
        is_late = holds & (watermarks >= due)
        for r in np.flatnonzero(is_late).tolist():
            missed.setdefault(r, []).append((int(starts[r]), int(watermarks[r] - due[r])))
    return missed


def _late_line(spec: WindowSpec, txn_id: str, model_key: str | None, event_time: int, watermark: int,
               missed: list[tuple[int, int]]) -> bytes:
    return orjson.dumps({
        "schema_version": ANALYTICS_SCHEMA_VERSION, "txn_id": txn_id, "model_key": model_key,
        "event_time": event_time, "window": spec.name, "watermark": watermark,
        "missed": [{"window_start": start, "window_end": start + spec.size_ms, "late_by_ms": by}
                   for start, by in sorted(missed)]})


def late_records(specs: Sequence[WindowSpec], allowed_lateness_ms: int, batch: RecordBatch,
                 operator_watermark: int) -> tuple[np.ndarray, list[int], list[tuple[str, bytes]]]:
    """The scoring side of windowed analytics: each record's effective watermark (the larger of its
    split's watermark at arrival and the scoring operator's, `operator_watermark`; the second
    only matters while a split is idle), and a (txn_id, JSON line) per record and window size it
    is late for: the windows whose end plus `allowed_lateness_ms` its effective watermark reached;
    returns (the watermarks, the late records' positions in the batch, ascending, the lines).

    The windows are emitted downstream, when that operator's watermark reaches them; it can never
    be ahead of this one, so a record not late here arrives there before its windows are emitted."""
    # Clamped: the watermark after the end of input is past the int64 range.
    watermarks = np.maximum(batch.source_watermarks, min(max(operator_watermark, NO_WATERMARK), 2**63 - 1))
    late: list[tuple[str, bytes]] = []
    rows: set[int] = set()
    for spec in specs:
        for r, missed in sorted(_missed(spec, batch.event_times, watermarks, allowed_lateness_ms).items()):
            rows.add(r)
            late.append((batch.txn_ids[r], _late_line(spec, batch.txn_ids[r], batch.model_keys[r],
                                                      int(batch.event_times[r]), int(watermarks[r]), missed)))
    return watermarks, sorted(rows), late
