"""Event-time windowed analytics over scored transactions: what a window is and when a record is
late for it (no Flink). The scoring operator finds the late records here (`late_records`); the
windows' figures are computed by the window operator (WindowAnalytics.java), and a plain-Python
reference of both that the tests hold the job to is tests/reference/analytics.py.

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

from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

import numpy as np
import orjson

from udfs.wire import END_OF_INPUT, NO_WATERMARK

if TYPE_CHECKING:
    from udfs.wire import RecordBatch

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
    # Clamped to Java's long range: the watermark after the end of input (END_OF_INPUT, plus the
    # 1 ms by which Flink's trails) is past it.
    watermarks = np.maximum(batch.source_watermarks, min(max(operator_watermark, NO_WATERMARK), END_OF_INPUT))
    late: list[tuple[str, bytes]] = []
    rows: set[int] = set()
    for spec in specs:
        for r, missed in sorted(_missed(spec, batch.event_times, watermarks, allowed_lateness_ms).items()):
            rows.add(r)
            late.append((batch.txn_ids[r], _late_line(spec, batch.txn_ids[r], batch.model_keys[r],
                                                      int(batch.event_times[r]), int(watermarks[r]), missed)))
    return watermarks, sorted(rows), late
