"""A plain-Python reference for the job's windowed analytics (tests.reference.analytics.analyze over the
inputs, split by split), and readers of the job's analytics and late outputs, shared by the file
and Kafka tests."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from datetime import datetime
from typing import Any, Iterable, Sequence

import orjson

from streaming.config import Settings
from streaming.config.from_settings import window_specs
from streaming.ops import kafka_tools
from tests.reference.analytics import ScoredRecord, UnscoredRecord, analyze
from udfs.analytics import WindowSpec

# The windows of the analytics tests: a tumbling and a sliding size, some out-of-orderness and lateness.
OUT_OF_ORDERNESS_MS = 2_000
ALLOWED_LATENESS_MS = 1_000
SPECS = (WindowSpec(30_000, 30_000), WindowSpec(60_000, 20_000))
GROUP_BY = ("merchant_category", "country")


def analytics_overrides() -> list[str]:
    """--set overrides that turn analytics on with the windows above."""
    windows = json.dumps([{"size_ms": spec.size_ms, "slide_ms": spec.slide_ms} for spec in SPECS])
    return ["analytics.enabled=true", f"analytics.windows={windows}", f"analytics.group_by={json.dumps(GROUP_BY)}",
            f"event_time.transactions.out_of_orderness_ms={OUT_OF_ORDERNESS_MS}",
            f"analytics.allowed_lateness_ms={ALLOWED_LATENESS_MS}",
            # No split goes idle in a test: what is late then depends on each split alone.
            "event_time.transactions.idleness_ms=600000"]


# The first "event_time" field of a line and its value, as the job's source reads it for watermarks
# (README, "Windowed analytics"): a JSON number, or a string.
_EVENT_TIME = re.compile(rb'"event_time"[ \t\r]*:[ \t\r]*("(?P<text>[^"\\]*)"|(?P<number>[-+0-9.eE]+))')
MAX_EVENT_TIME_MS = 253_402_300_800_000  # 10000-01-01


def readable_event_time(line: bytes) -> int | None:
    """The event time (epoch ms) the watermarks take from a record, whether or not the record is
    usable: its first event_time field as an integral number, or ISO-8601 text with a zone; None
    when there is none such, or it is outside 1970..9999."""
    found = _EVENT_TIME.search(line)
    if found is None:
        return None
    try:
        if found.group("number") is not None:
            number = float(found.group("number"))
            millis = int(number) if number.is_integer() else None
        else:
            text = found.group("text").decode("latin-1").strip()
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text)
            millis = None if moment.tzinfo is None else round(moment.timestamp() * 1000)
    except (ValueError, OverflowError, IndexError):
        return None
    return millis if millis is not None and 0 <= millis < MAX_EVENT_TIME_MS else None


def delay_event_times(lines: Iterable[bytes], seed: int, share: float, max_delay_ms: int) -> list[bytes]:
    """The lines with `share` of the well-formed ones given an event time up to `max_delay_ms`
    earlier than written: records that arrive out of order, some later than the watermark allows."""
    rng = random.Random(seed)
    delayed = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("event_time"), int) and rng.random() < share:
            record["event_time"] -= rng.randrange(max_delay_ms)
            line = orjson.dumps(record)
        delayed.append(line)
    return delayed


def expected(splits: Sequence[tuple[Any, Sequence[bytes]]], scores: Sequence[dict[str, Any]],
             specs: Sequence[WindowSpec] = SPECS, group_by: Sequence[str] = GROUP_BY,
             out_of_orderness_ms: int = OUT_OF_ORDERNESS_MS, allowed_lateness_ms: int = ALLOWED_LATENESS_MS
             ) -> tuple[dict[tuple, dict[str, Any]], dict[tuple[str, str], list[tuple]]]:
    """(window name, start, group field, group) -> figures, and (txn_id, window name) -> [(start,
    end, late_by_ms)] of the windows it missed, for `splits`: (split, its lines in arrival order),
    with each scored record's score, label and context taken from the job's score lines."""
    by_txn = {score["txn_id"]: score for score in scores}
    arrivals, txn_ids = [], []
    for split, lines in splits:
        for line in lines:
            try:
                txn_id = json.loads(line).get("txn_id")
            except (ValueError, AttributeError):
                txn_id = None
            score = by_txn.get(txn_id) if isinstance(txn_id, str) else None
            if score is not None:
                arrivals.append((split, ScoredRecord(
                    score["event_time"], {field: score[field] for field in group_by}, score["account"],
                    score["amount"], score["currency"], score["score"], score["label"])))
            elif (event_time := readable_event_time(line)) is not None:
                arrivals.append((split, UnscoredRecord(event_time)))
            else:
                continue
            txn_ids.append(txn_id)
    windows, late = {}, {}
    for spec in specs:
        spec_windows, spec_late = analyze(arrivals, spec, group_by, out_of_orderness_ms, allowed_lateness_ms)
        for (start, field, group), figures in spec_windows.items():
            windows[(spec.name, start, field, group)] = figures.figures()
        for record in spec_late:
            late[(txn_ids[record.index], spec.name)] = [(start, start + spec.size_ms, by) for start, by in record.missed]
    return windows, late


def emitted_windows(lines: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """(window name, start, group field, group) -> figures of the job's analytics lines; fails on a
    window emitted twice."""
    emitted = {}
    for line in lines:
        key = (line["window"], line["window_start"], line["group_by"], line["group"])
        assert key not in emitted, f"window emitted twice: {key}"
        emitted[key] = {name: value for name, value in line.items()
                        if name not in ("schema_version", "window", "window_start", "window_end", "group_by", "group")}
    return emitted


def late_records(lines: Iterable[dict[str, Any]]) -> dict[tuple[str, str], list[tuple]]:
    """(txn_id, window name) -> [(start, end, late_by_ms)] of the job's late lines; fails on a repeat."""
    late = {}
    for line in lines:
        key = (line["txn_id"], line["window"])
        assert key not in late, f"late record written twice: {key}"
        late[key] = [(missed["window_start"], missed["window_end"], missed["late_by_ms"]) for missed in line["missed"]]
    return late


def close(a: Any, b: Any, tolerance: float = 1e-9) -> bool:
    """Equal, with floats (also inside dicts) equal to `tolerance`, relative or absolute."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tolerance) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    return a == b


def mismatches(emitted: dict[tuple, dict[str, Any]], reference: dict[tuple, dict[str, Any]]) -> list[tuple]:
    """The windows whose figures differ (beyond 1e-9) between the two."""
    return [key for key in emitted.keys() & reference.keys() if not close(emitted[key], reference[key])]


def topic_splits(settings: Settings, idle_timeout_s: float = 8) -> list[tuple[int, list[bytes]]]:
    """The transactions topic as the job reads it: (partition, its records in offset order), each
    partition a split, read to the topic's end."""
    partitions: dict[int, list[bytes]] = {}
    for partition, _, _, value in sorted(kafka_tools.tail(settings, settings.kafka.transactions_topic,
                                                          idle_timeout_s=idle_timeout_s, until_end=True)):
        partitions.setdefault(partition, []).append(value)
    return sorted(partitions.items())


def without_redeliveries(splits: list[tuple[int, list[bytes]]], scores: Sequence[dict[str, Any]]
                         ) -> list[tuple[int, list[bytes]]]:
    """Each split without the redeliveries de-duplication dropped before scoring (docs/dedup.md):
    of the records of a txn_id, only as many are kept, the first in their split, as the job scored
    (a record that is no JSON object, or dead-lettered, is left to the reference, which skips it)."""
    scored = Counter(score["txn_id"] for score in scores)
    kept_splits = []
    for split, records in splits:
        kept = []
        for record in records:
            try:
                txn_id = json.loads(record).get("txn_id")
            except (ValueError, AttributeError):  # not JSON, or not an object
                txn_id = None
            txn_id = " ".join(txn_id.split()) if isinstance(txn_id, str) else None  # as cleaning writes it
            if txn_id in scored:
                if scored[txn_id] == 0:
                    continue  # a redelivery: the job scored this txn_id as often as it was kept
                scored[txn_id] -= 1
            kept.append(record)
        kept_splits.append((split, kept))
    return kept_splits


def expected_for(settings: Settings, splits: Sequence[tuple[Any, Sequence[bytes]]],
                 scores: Sequence[dict[str, Any]]) -> tuple[dict[tuple, dict[str, Any]], dict[tuple[str, str], list[tuple]]]:
    """expected() with the windows, groups, out-of-orderness and lateness that `settings` configures."""
    return expected(splits, scores, specs=window_specs(settings), group_by=settings.analytics.group_by,
                    out_of_orderness_ms=settings.event_time.transactions.out_of_orderness_ms,
                    allowed_lateness_ms=settings.analytics.allowed_lateness_ms)


def committed_analytics(settings: Settings, idle_timeout_s: float = 8,
                        until_end: bool = True) -> tuple[dict[tuple, dict[str, Any]], dict[tuple[str, str], list[tuple]]]:
    """The committed analytics and late lines of the Kafka topics, as emitted_windows() and
    late_records() give them (each fails on a repeat)."""
    def committed_lines(topic: str) -> list[dict[str, Any]]:
        return [json.loads(value) for _, _, _, value in kafka_tools.tail(settings, topic, idle_timeout_s=idle_timeout_s,
                                                                         until_end=until_end)]

    return (emitted_windows(committed_lines(settings.kafka.analytics_topic)),
            late_records(committed_lines(settings.kafka.late_topic)))


def assert_committed_analytics_as_the_reference(settings: Settings, scores: Sequence[dict[str, Any]]) -> None:
    """The committed analytics and late lines of a Kafka-mode job that has ended (`settings`: the
    job's, with its windows; `scores`: its committed score lines): each window once, none missing,
    with the figures and late set of the plain-Python reference over each partition's records in
    offset order, which is what one uninterrupted run gives whatever its parallelism (no split may
    go idle: see analytics_overrides)."""
    windows, late = expected_for(settings, without_redeliveries(topic_splits(settings), scores), scores)
    emitted, emitted_late = committed_analytics(settings)
    assert windows, "the reference has no window"
    assert emitted.keys() == windows.keys(), (len(emitted.keys() - windows.keys()), len(windows.keys() - emitted.keys()))
    wrong = mismatches(emitted, windows)
    assert not wrong, [(key, emitted[key], windows[key]) for key in wrong[:2]]
    assert emitted_late == late
