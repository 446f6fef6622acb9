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

import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import orjson

from udfs.metrics import SCORE_CLIP

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
    """The running figures of one window and group; `add` a record, `merge` another partial.

    Per-record values (account pseudonyms, and the score and label of each labelled record) are
    kept as chunks of numpy arrays, appended on merge and joined only when the window's figures are
    computed: a partial then pickles as a few buffers, not as thousands of Python objects."""

    transactions: int = 0
    frauds: int = 0
    score_sum: float = 0.0
    # currency -> [count, sum, max]
    amounts: dict[str, list] = field(default_factory=dict)
    account_chunks: list[np.ndarray] = field(default_factory=list)  # bytes (pseudonyms are ASCII hex)
    score_chunks: list[np.ndarray] = field(default_factory=list)  # float64, labelled records only
    label_chunks: list[np.ndarray] = field(default_factory=list)  # int8, 0 or 1, in step with score_chunks

    def add(self, record: ScoredRecord) -> None:
        self.transactions += 1
        self.score_sum += record.score
        self.account_chunks.append(np.array([record.account], np.bytes_))
        self.add_amounts(record.currency, 1, record.amount, record.amount)
        if record.label is not None:
            self.frauds += record.label
            self.score_chunks.append(np.array([record.score], np.float64))
            self.label_chunks.append(np.array([record.label], np.int8))

    def add_amounts(self, currency: str, count: int, total: float, largest: float) -> None:
        figures = self.amounts.get(currency)
        if figures is None:
            self.amounts[currency] = [count, total, largest]
        else:
            figures[0] += count
            figures[1] += total
            if largest > figures[2]:
                figures[2] = largest

    def merge(self, other: WindowFigures) -> None:
        self.transactions += other.transactions
        self.frauds += other.frauds
        self.score_sum += other.score_sum
        for currency, (count, total, largest) in other.amounts.items():
            self.add_amounts(currency, count, total, largest)
        self.account_chunks += other.account_chunks
        self.score_chunks += other.score_chunks
        self.label_chunks += other.label_chunks

    def figures(self) -> dict[str, Any]:
        """The window's figures (see `window_figures`)."""
        return window_figures([self])[0]


def window_figures(windows: Sequence[WindowFigures]) -> list[dict[str, Any]]:
    """The figures of each window, JSON-ready: counts; fraud rate over the labelled records;
    amount sum, mean and max per currency; distinct accounts; mean score; log loss (nats, scores
    clipped to [1e-15, 1 - 1e-15] as udfs.metrics.log_loss does) and ROC AUC (ties counting half,
    as udfs.metrics.roc_auc) of the labelled records. A rate, mean or loss is null when it has
    nothing to average over, the AUC also when the window's labels are all one class.

    Computed for all the windows at once, in numpy over their records joined (each tagged with its
    window): the cost per window is then a few Python operations, not a few numpy calls."""
    count = len(windows)
    accounts, account_window = _joined(windows, "account_chunks", np.bytes_)
    scores, score_window = _joined(windows, "score_chunks", np.float64)
    labels = _joined(windows, "label_chunks", np.int8)[0].astype(np.float64)
    # Distinct accounts: the (window, account) pairs that differ from the one before, once sorted.
    order = np.lexsort((accounts, account_window))
    by_window, sorted_accounts = account_window[order], accounts[order]
    first_of_pair = np.ones(len(order), bool)
    first_of_pair[1:] = (by_window[1:] != by_window[:-1]) | (sorted_accounts[1:] != sorted_accounts[:-1])
    distinct = np.bincount(by_window[first_of_pair], minlength=count).tolist()
    labelled = np.bincount(score_window, minlength=count)
    clipped = np.clip(scores, SCORE_CLIP, 1 - SCORE_CLIP)
    loss_sums = np.bincount(score_window, np.where(labels == 1, -np.log(clipped), -np.log(1 - clipped)), count)
    # ROC AUC by the rank-sum statistic: ranks within each window, ties sharing their mean rank.
    order = np.lexsort((scores, score_window))
    by_window, sorted_scores, sorted_labels = score_window[order], scores[order], labels[order]
    position = np.arange(len(order)) - np.searchsorted(by_window, np.arange(count))[by_window]
    first_of_tie = np.ones(len(order), bool)
    first_of_tie[1:] = (by_window[1:] != by_window[:-1]) | (sorted_scores[1:] != sorted_scores[:-1])
    tie = np.cumsum(first_of_tie) - 1
    mean_rank = position[first_of_tie] + (np.bincount(tie) + 1) / 2  # 1-based
    rank_sums = np.bincount(by_window, mean_rank[tie] * sorted_labels, count)
    positives = np.bincount(by_window, sorted_labels, count)
    negatives = labelled - positives
    figures = []
    for index, window in enumerate(windows):
        n, p, q = int(labelled[index]), float(positives[index]), float(negatives[index])
        figures.append({
            "transactions": window.transactions,
            "labelled_transactions": n,
            "fraud_count": window.frauds,
            "fraud_rate": window.frauds / n if n else None,
            "amount": {currency: {"sum": total, "mean": total / amounts, "max": largest}
                       for currency, (amounts, total, largest) in sorted(window.amounts.items())},
            "distinct_accounts": distinct[index],
            "mean_score": window.score_sum / window.transactions if window.transactions else None,
            "log_loss": float(loss_sums[index]) / n if n else None,
            "roc_auc": (float(rank_sums[index]) - p * (p + 1) / 2) / (p * q) if p and q else None,
        })
    return figures


def _joined(windows: Sequence[WindowFigures], chunks: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(the values of every window's `chunks` joined, the index of each value's window)."""
    lists = [getattr(window, chunks) for window in windows]
    lengths = np.fromiter((sum(map(len, chunk_list)) for chunk_list in lists), np.int64, len(lists))
    flat = [chunk for chunk_list in lists for chunk in chunk_list]
    values = np.concatenate(flat) if flat else np.empty(0, dtype)
    return values, np.repeat(np.arange(len(lists)), lengths)


def window_line(spec: WindowSpec, start: int, group_by: str, group: str, figures: dict[str, Any]) -> dict[str, Any]:
    """One analytics output line (before JSON encoding) for a window and group, of its figures
    (`window_figures`)."""
    return {"schema_version": ANALYTICS_SCHEMA_VERSION, "window": spec.name, "window_start": start,
            "window_end": start + spec.size_ms, "group_by": group_by, "group": group, **figures}


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


def _utf8_column(values: Sequence[str]) -> np.ndarray:
    """Strings as a fixed-width bytes array of their UTF-8 (1 byte a character for ASCII, not 4 as
    numpy's str arrays take). numpy drops trailing NUL bytes, which cleaned values do not end in."""
    return np.array([value.encode("utf-8") for value in values], np.bytes_)


class ScoredColumns(NamedTuple):
    """What windowed analytics needs of scored records, as numpy columns (strings as UTF-8 bytes
    arrays), so that a batch pickles as a few small buffers: the scoring operator sends one per batch."""

    txn_ids: np.ndarray  # bytes
    event_times: np.ndarray  # int64, epoch ms
    watermarks: np.ndarray  # int64: each record's effective watermark at its arrival (see late_records)
    scores: np.ndarray  # float64, probability of fraud before learning
    labels: np.ndarray  # int8: 0, 1, or -1 for none
    amounts: np.ndarray  # float64
    currencies: np.ndarray  # bytes
    accounts: np.ndarray  # bytes: pseudonyms (ASCII hex)
    groups: tuple[np.ndarray, ...]  # bytes: each group_by field's values

    @classmethod
    def of(cls, batch: RecordBatch, scores: np.ndarray, watermarks: np.ndarray, group_by: Sequence[str]
           ) -> ScoredColumns:
        """The columns of a scored batch; `scores` and effective `watermarks` in the batch's order."""
        return cls(_utf8_column(batch.txn_ids), batch.event_times, watermarks, scores, batch.labels, batch.amounts,
                   _utf8_column(batch.currencies), np.array(batch.accounts, np.bytes_),
                   tuple(_utf8_column(getattr(batch, GROUP_COLUMNS[name])) for name in group_by))

    def to_bytes(self) -> bytes:
        return pickle.dumps(tuple(self), pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoredColumns:
        return cls(*pickle.loads(data))

    @classmethod
    def joined(cls, chunks: Sequence[ScoredColumns]) -> ScoredColumns:
        """The chunks' records one after the other."""
        if len(chunks) == 1:
            return chunks[0]
        return cls(*(np.concatenate([getattr(chunk, name) for chunk in chunks]) for name in cls._fields[:-1]),
                   tuple(np.concatenate([chunk.groups[i] for chunk in chunks]) for i in range(len(chunks[0].groups))))

    def take(self, rows: np.ndarray) -> ScoredColumns:
        """The records at `rows`."""
        return ScoredColumns(*(getattr(self, name)[rows] for name in self._fields[:-1]),
                             tuple(values[rows] for values in self.groups))


def _missed(spec: WindowSpec, event_times: np.ndarray, watermarks: np.ndarray, allowed_lateness_ms: int,
            before: np.ndarray | None = None) -> dict[int, list[tuple[int, int]]]:
    """Record position -> [(window start, late_by_ms)] of the windows of `spec` each record is late
    for at `watermarks` (due time reached), leaving out those already due at `before`."""
    missed: dict[int, list[tuple[int, int]]] = {}
    for starts, holds in spec.window_starts(event_times):
        due = starts + spec.size_ms + allowed_lateness_ms
        is_late = holds & (watermarks >= due)
        if before is not None:
            is_late &= before < due
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
                 operator_watermark: int) -> tuple[np.ndarray, list[tuple[str, bytes]]]:
    """The scoring side of windowed analytics: each record's effective watermark (the larger of its
    split's watermark at arrival and the scoring operator's, `operator_watermark`; the second
    only matters while a split is idle), and a (txn_id, JSON line) per record and window size it
    is late for: the windows whose end plus `allowed_lateness_ms` its effective watermark reached.

    The windows are emitted downstream, when that operator's watermark reaches them; it can never
    be ahead of this one, so a record not late here arrives there before its windows are emitted."""
    # Clamped: the watermark after the end of input is past the int64 range.
    watermarks = np.maximum(batch.source_watermarks, min(max(operator_watermark, NO_WATERMARK), 2**63 - 1))
    late: list[tuple[str, bytes]] = []
    for spec in specs:
        for r, missed in sorted(_missed(spec, batch.event_times, watermarks, allowed_lateness_ms).items()):
            late.append((batch.txn_ids[r], _late_line(spec, batch.txn_ids[r], batch.model_keys[r],
                                                      int(batch.event_times[r]), int(watermarks[r]), missed)))
    return watermarks, late


class WindowAnalytics:
    """The windowed figures of the scored stream, as the job's `window-analytics` operator computes
    them: it `receive`s each scored batch (ScoredColumns, with its records' effective watermarks:
    see `late_records`) as it comes, and `emit`s every window whose end plus the allowed lateness
    the watermark has reached, once. A record counts in its windows it was not late for.

    Records wait (`pending`) until all their windows are emitted; figures are computed when windows
    are emitted, for all the windows due at once, in numpy."""

    def __init__(self, specs: Sequence[WindowSpec], group_by: Sequence[str], allowed_lateness_ms: int):
        self.specs = list(specs)
        self.group_by = list(group_by)
        self.allowed_lateness_ms = allowed_lateness_ms
        self.pending: list[ScoredColumns] = []
        self.emitted_through = NO_WATERMARK  # every window due at or before this was emitted

    def receive(self, columns: ScoredColumns) -> tuple[list[tuple[str, bytes]], set[int], ScoredColumns]:
        """Takes a scored batch. Returns a late-record line for each record and window size that it
        would have counted in though already emitted (which the scoring side's rules rule out
        unless a restore met an idle split; never dropped silently), the due times of the windows
        the batch counts in (for timers), and the records as kept (to be stored: `restore` takes them)."""
        watermarks = np.maximum(columns.watermarks, self.emitted_through)
        late: list[tuple[str, bytes]] = []
        due_times: set[int] = set()
        event_times = columns.event_times
        for spec in self.specs:
            if self.emitted_through > NO_WATERMARK:
                for r, missed in sorted(_missed(spec, event_times, watermarks, self.allowed_lateness_ms,
                                                columns.watermarks).items()):
                    txn_id = columns.txn_ids[r].decode("utf-8")
                    late.append((txn_id, _late_line(spec, txn_id, None, int(event_times[r]), int(watermarks[r]),
                                                    missed)))
            for starts, holds in spec.window_starts(event_times):
                due = starts + spec.size_ms + self.allowed_lateness_ms
                due_times.update(np.unique(due[holds & (watermarks < due)]).tolist())
        kept = columns._replace(watermarks=watermarks)
        self.pending.append(kept)
        return late, due_times, kept

    def emit(self, watermark: int) -> tuple[list[tuple[str, bytes]], ScoredColumns | None]:
        """The JSON lines of every window due at or before `watermark` and not emitted before (by due
        time, window, start, group field and group), each with `<group_by>=<group>` (a message
        key); and, when records were let go (all their windows emitted), the records still
        pending, as one batch (None: the pending records did not change)."""
        if watermark <= self.emitted_through or not self.pending:
            self.emitted_through = max(self.emitted_through, watermark)
            return [], None
        pending = ScoredColumns.joined(self.pending)
        lateness = self.allowed_lateness_ms
        # Only the records with a window due now are grouped; the rest wait as they are.
        due_now = np.zeros(len(pending.event_times), bool)
        for spec in self.specs:
            oldest_start = pending.event_times - pending.event_times % spec.slide_ms - (
                spec.windows_per_record - 1) * spec.slide_ms
            due_now |= oldest_start + spec.size_ms + lateness <= watermark
        records = pending.take(np.flatnonzero(due_now)) if not due_now.all() else pending
        event_times = records.event_times
        partials: dict[WindowKey, WindowFigures] = {}
        still_pending = np.zeros(len(pending.event_times), bool)
        currency_codes, currencies = _codes(records.currencies)
        columns = [(name, *_codes(values)) for name, values in zip(self.group_by, records.groups)]
        for index, spec in enumerate(self.specs):
            newest_of_pending = pending.event_times - pending.event_times % spec.slide_ms
            still_pending |= newest_of_pending + spec.size_ms + lateness > watermark  # its newest window is not due
            for starts, holds in spec.window_starts(event_times):
                due = starts + spec.size_ms + lateness
                rows = np.flatnonzero(holds & (due <= watermark) & self._counts_in(due, records.watermarks))
                if len(rows):
                    _group(index, rows, starts, columns, records, currency_codes, currencies, partials)
        self.emitted_through = watermark
        due = sorted(partials, key=lambda key: (key.start + self.specs[key.window].size_ms, key))
        figures = window_figures([partials[key] for key in due])
        lines = [(f"{key.group_by}={key.group}", orjson.dumps(window_line(
            self.specs[key.window], key.start, key.group_by, key.group, window))) for key, window in zip(due, figures)]
        if still_pending.all():
            self.pending = [pending]
            return lines, None
        remaining = pending.take(np.flatnonzero(still_pending))
        self.pending = [remaining] if len(remaining.event_times) else []
        return lines, remaining

    def _counts_in(self, due: np.ndarray, watermarks: np.ndarray) -> np.ndarray:
        """Whether each record counts in its window due at `due`: the window is not emitted yet and
        the record was not late for it (its effective watermark had not reached `due`)."""
        return (due > self.emitted_through) & (watermarks < due)

    def next_due(self) -> int | None:
        """The earliest due time of a window not emitted yet that a pending record counts in; None if none."""
        earliest = None
        for records in self.pending:
            event_times = records.event_times
            for spec in self.specs:
                for starts, holds in spec.window_starts(event_times):
                    due = starts + spec.size_ms + self.allowed_lateness_ms
                    due = due[holds & self._counts_in(due, records.watermarks)]
                    if len(due):
                        first = int(due.min())
                        earliest = first if earliest is None else min(earliest, first)
        return earliest

    def restore(self, emitted_through: int, kept: Iterable[ScoredColumns]) -> None:
        """Starts again from stored state: the watermark through which windows were emitted, and
        the records kept (as `receive` and `emit` returned them, in order)."""
        self.emitted_through = emitted_through
        self.pending = list(kept)


def _group(index: int, rows: np.ndarray, starts: np.ndarray, columns, records: ScoredColumns,
           currency_codes: np.ndarray, currencies: list, partials: dict[WindowKey, WindowFigures]) -> None:
    """Adds the records `rows` (each in the window of spec `index` starting at `starts[row]`) to the
    figures of their (window, group), for every group field: sums and counts for all groups at
    once, then one WindowFigures update per group."""
    scores, labels, amounts, accounts = records.scores, records.labels, records.amounts, records.accounts
    labelled = labels >= 0
    row_starts = starts[rows]
    for group_by, codes, values in columns:
        # One group per (start, group value); rows ordered by group and, within it, by position.
        combined = row_starts * len(values) + codes[rows]
        order = np.argsort(combined, kind="stable")
        ordered_rows = rows[order]
        firsts = np.concatenate(([0], np.flatnonzero(np.diff(combined[order])) + 1))
        group_of_row = np.repeat(np.arange(len(firsts)), np.diff(np.append(firsts, len(ordered_rows))))
        ends = np.append(firsts[1:], len(ordered_rows)).tolist()
        score_sums = np.add.reduceat(scores[ordered_rows], firsts).tolist()
        is_labelled = labelled[ordered_rows]
        labelled_rows = ordered_rows[is_labelled]
        labelled_ends = np.cumsum(np.add.reduceat(is_labelled.astype(np.int64), firsts)).tolist()
        labelled_scores, labelled_labels = scores[labelled_rows], labels[labelled_rows]
        frauds = np.bincount(group_of_row, np.where(is_labelled, labels[ordered_rows], 0),
                             len(firsts)).astype(np.int64).tolist()
        ordered_accounts = accounts[ordered_rows]
        # Amount count, sum and max per group and currency.
        by_currency = group_of_row * len(currencies) + currency_codes[ordered_rows]
        ordered_amounts = amounts[ordered_rows]
        slots = len(firsts) * len(currencies)
        amount_counts = np.bincount(by_currency, minlength=slots).tolist()
        amount_sums = np.bincount(by_currency, ordered_amounts, slots).tolist()
        amount_maxes = np.full(slots, -np.inf)
        np.maximum.at(amount_maxes, by_currency, ordered_amounts)
        amount_maxes = amount_maxes.tolist()
        begin, labelled_begin = 0, 0
        for group_index, (end, labelled_end) in enumerate(zip(ends, labelled_ends)):
            first = ordered_rows[begin]
            key = WindowKey(index, int(starts[first]), group_by, values[codes[first]])
            figures = partials.get(key)
            if figures is None:
                figures = partials[key] = WindowFigures()
            figures.transactions += end - begin
            figures.score_sum += score_sums[group_index]
            figures.account_chunks.append(ordered_accounts[begin:end])
            if labelled_end > labelled_begin:
                figures.frauds += frauds[group_index]
                figures.score_chunks.append(labelled_scores[labelled_begin:labelled_end])
                figures.label_chunks.append(labelled_labels[labelled_begin:labelled_end])
            for code, currency in enumerate(currencies):
                slot = group_index * len(currencies) + code
                if amount_counts[slot]:
                    figures.add_amounts(currency, amount_counts[slot], amount_sums[slot], amount_maxes[slot])
            begin, labelled_begin = end, labelled_end


def _codes(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(each value's code, int64; the distinct values, by first appearance, decoded from UTF-8).
    A dict, not np.unique: sorting strings costs more than hashing them."""
    index: dict[bytes, int] = {}
    codes = np.fromiter((index.setdefault(value, len(index)) for value in values.tolist()), np.int64, len(values))
    return codes, [value.decode("utf-8") for value in index]
