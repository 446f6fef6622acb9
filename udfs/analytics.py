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
import zlib
from typing import TYPE_CHECKING, Any, Hashable, Iterable, NamedTuple, Sequence

import orjson

from udfs.metrics import log_loss, none_if_nan, roc_auc

if TYPE_CHECKING:
    import numpy as np

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
        self.add_values(record.account, record.amount, record.currency, record.score, record.label)

    def add_values(self, account: str, amount: float, currency: str, score: float, label: int | None) -> None:
        """`add` of a record given field by field (label None: unlabelled)."""
        self.transactions += 1
        self.score_sum += score
        self.accounts.add(account)
        figures = self.amounts.get(currency)
        if figures is None:
            self.amounts[currency] = [1, amount, amount]
        else:
            figures[0] += 1
            figures[1] += amount
            if amount > figures[2]:
                figures[2] = amount
        if label is not None:
            self.frauds += label
            self.scores.append(score)
            self.labels.append(label)

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


class WindowKey(NamedTuple):
    """One window of one group: the index of its WindowSpec, its start (epoch ms), the group field
    and the group's value."""

    window: int
    start: int
    group_by: str
    group: str


Partials = dict[WindowKey, WindowFigures]


def analytics_shard(group_by: str, group: str, shards: int) -> int:
    """The merging shard (0..shards-1) of a group: crc32, so the same in every process and run."""
    return zlib.crc32(f"{group_by}={group}".encode("utf-8")) % shards


class BatchAnalytics:
    """The scoring side of windowed analytics: a scored batch's records, as partial figures of
    their windows and groups (to be merged across batches by `WindowMerger`), and its late records.

    A record is late for each of its windows whose end plus `allowed_lateness_ms` its effective
    watermark has reached: the larger of its split's watermark at its arrival (the batch's
    source_watermarks) and the watermark of the operator that scores it. The second matters only
    while a split is idle; otherwise it never exceeds the first. A late record is left out of the
    windows it missed and counted in the others."""

    def __init__(self, specs: Sequence[WindowSpec], group_by: Sequence[str], allowed_lateness_ms: int, shards: int):
        self.specs = list(specs)
        self.group_by = list(group_by)
        self.allowed_lateness_ms = allowed_lateness_ms
        self.shards = shards

    def assess(self, batch: RecordBatch, scores: np.ndarray, operator_watermark: int
               ) -> tuple[dict[int, Partials], list[tuple[str, bytes]]]:
        """(merging shard -> that shard's partial figures, [(txn_id, late-record JSON line)]) of a
        batch and its records' scores (probabilities, in order)."""
        partials: dict[int, Partials] = {}
        late: list[tuple[str, bytes]] = []
        shard_of: dict[tuple[str, str], Partials] = {}
        columns = [(name, getattr(batch, GROUP_COLUMNS[name])) for name in self.group_by]
        lateness = self.allowed_lateness_ms
        for r, (event_time, source_watermark, score, label, amount, currency, account) in enumerate(zip(
                batch.event_times.tolist(), batch.source_watermarks.tolist(), scores.tolist(), batch.labels.tolist(),
                batch.amounts.tolist(), batch.currencies, batch.accounts)):
            watermark = max(source_watermark, operator_watermark)
            label = None if label < 0 else label
            for index, spec in enumerate(self.specs):
                missed = []
                for start in spec.starts(event_time):
                    due = start + spec.size_ms + lateness
                    if watermark >= due:
                        missed.append({"window_start": start, "window_end": start + spec.size_ms,
                                       "late_by_ms": watermark - due})
                        continue
                    for group_by, column in columns:
                        group = column[r]
                        shard_partials = shard_of.get((group_by, group))
                        if shard_partials is None:
                            shard = analytics_shard(group_by, group, self.shards)
                            shard_partials = shard_of[(group_by, group)] = partials.setdefault(shard, {})
                        key = WindowKey(index, start, group_by, group)
                        figures = shard_partials.get(key)
                        if figures is None:
                            figures = shard_partials[key] = WindowFigures()
                        figures.add_values(account, amount, currency, score, label)
                if missed:
                    txn_id = batch.txn_ids[r]
                    late.append((txn_id, orjson.dumps({
                        "schema_version": ANALYTICS_SCHEMA_VERSION, "txn_id": txn_id,
                        "model_key": batch.model_keys[r], "event_time": event_time, "window": spec.name,
                        "watermark": watermark, "missed": missed})))
        return partials, late


class WindowMerger:
    """The merging side of windowed analytics: partial figures from the scoring side, merged per
    window and group, and emitted once, when the watermark reaches a window's end plus the
    allowed lateness.

    Each partial is an entry with an id (the job keeps entries in keyed state, as they came, so
    that a restored job merges them again); an entry is done once every window it touched has been
    emitted."""

    def __init__(self, specs: Sequence[WindowSpec], allowed_lateness_ms: int):
        self.specs = list(specs)
        self.allowed_lateness_ms = allowed_lateness_ms
        self.open: Partials = {}
        self.entries: dict[str, int] = {}  # entry id -> the due time of its last window
        self.emitted_through = NO_WATERMARK  # every window due at or before this was emitted

    def due(self, key: WindowKey) -> int:
        """When a window is emitted: the watermark (epoch ms) that reaches its end plus the lateness."""
        return key.start + self.specs[key.window].size_ms + self.allowed_lateness_ms

    def add(self, entry_id: str, partials: Partials) -> tuple[set[int], list[bytes]]:
        """Merges an entry's partials. Returns the due times of its windows (for timers), and a
        late-output line for each partial of a window already emitted, which the scoring side's
        rules never send (kept, not dropped, should it ever happen)."""
        due_times: set[int] = set()
        stragglers: list[bytes] = []
        for key, figures in partials.items():
            due = self.due(key)
            if due <= self.emitted_through:
                spec = self.specs[key.window]
                stragglers.append(orjson.dumps({
                    "schema_version": ANALYTICS_SCHEMA_VERSION, "window": spec.name, "window_start": key.start,
                    "window_end": key.start + spec.size_ms, "group_by": key.group_by, "group": key.group,
                    "transactions": figures.transactions, "reason": "arrived after its window was emitted"}))
                continue
            due_times.add(due)
            mine = self.open.get(key)
            if mine is None:  # a copy: the entry's own figures stay as they came, for a restore
                mine = self.open[key] = WindowFigures()
            mine.merge(figures)
        if due_times:
            self.entries[entry_id] = max(due_times)
        return due_times, stragglers

    def restore(self, emitted_through: int, entries: Iterable[tuple[str, Partials]]) -> None:
        """Starts again from stored state: what was emitted through, and the entries not yet done
        (their windows already emitted are skipped)."""
        self.open, self.entries, self.emitted_through = {}, {}, emitted_through
        for entry_id, partials in entries:
            self.add(entry_id, {key: figures for key, figures in partials.items() if self.due(key) > emitted_through})

    def emit(self, watermark: int) -> tuple[list[tuple[str, bytes]], list[str]]:
        """The JSON lines of every window due at or before `watermark` (by due time, window, start,
        group field and group), each with its group as `<group_by>=<group>` (a message key), and
        the ids of the entries now done."""
        if watermark <= self.emitted_through:
            return [], []
        self.emitted_through = watermark
        due = sorted((key for key in self.open if self.due(key) <= watermark),
                     key=lambda key: (self.due(key), key))
        lines = [(f"{key.group_by}={key.group}", orjson.dumps(window_line(
            self.specs[key.window], key.start, key.group_by, key.group, self.open.pop(key)))) for key in due]
        done = [entry_id for entry_id, last_due in self.entries.items() if last_due <= watermark]
        for entry_id in done:
            del self.entries[entry_id]
        return lines, done
