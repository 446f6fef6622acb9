"""De-duplication by txn_id (udfs/dedup.py): what counts as a redelivery, what is remembered, for how
long, and what survives a restore (the chunk bytes)."""

from __future__ import annotations

import numpy as np
import orjson

from tests.output_schemas import violations
from udfs.dedup import SeenIds, duplicate_dead_letter, seen_line, without_rows
from udfs.feature_log import FeatureLog, is_dropped_row, with_dropped_rows
from udfs.records import ModelInput, ScoreContext
from udfs.wire import NO_WATERMARK, RecordBatch

HOUR_MS = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def batch_of(*records: tuple[str, str, int], source: str = "file:{line}:/in.jsonl") -> RecordBatch:
    """A batch of (model key, txn_id, event time) records, record i from line i + 1 of a file."""
    inputs = [ModelInput(key, txn_id, event_time, None, [0], [1.0], ScoreContext("fuel", "US", "web", 1.0, "USD", "a"))
              for key, txn_id, event_time in records]
    fields = list(RecordBatch.of(inputs))
    fields[RecordBatch._fields.index("sources")] = [source.format(line=i + 1) for i in range(len(inputs))]
    return RecordBatch(*fields)


def test_a_redelivery_under_the_same_key_is_found_within_the_horizon_and_not_after_it():
    seen = SeenIds(HOUR_MS)
    first = batch_of(("fuel", "t1", T0), ("fuel", "t2", T0 + 10))
    assert seen.duplicates(first, NO_WATERMARK) == []
    seen.remember(first, None, "w", 0)
    again = batch_of(("fuel", "t1", T0), ("grocery", "t2", T0 + 10), ("fuel", "t3", T0))
    found = seen.duplicates(again, T0 + HOUR_MS - 1)
    # t2 under another key is not a redelivery (RepeatedIds.java reports it); t3 is new.
    assert [(d.row, d.first.event_time, d.first.source) for d in found] == [(0, T0, "file:1:/in.jsonl")]
    # Once the watermark reaches the first delivery's event time + horizon, it is new again.
    assert seen.duplicates(again, T0 + HOUR_MS) == []


def test_a_txn_id_twice_in_one_batch_is_a_redelivery_the_second_time():
    seen = SeenIds(HOUR_MS)
    batch = batch_of(("fuel", "t1", T0), ("fuel", "t1", T0), ("fuel", "t1", T0 + 5))
    found = seen.duplicates(batch, NO_WATERMARK)
    assert [(d.row, d.first.source) for d in found] == [(1, "file:1:/in.jsonl"), (2, "file:1:/in.jsonl")]
    kept_batch, kept = without_rows(batch, [d.row for d in found])
    assert kept.tolist() == [0] and kept_batch.txn_ids == ["t1"] and kept_batch.sources == ["file:1:/in.jsonl"]


def test_chunks_restore_the_same_memory_and_expire_whole():
    seen = SeenIds(HOUR_MS)
    chunk_a, data_a = seen.remember(batch_of(("fuel", "t1", T0), ("k\u00e9y", "t2", T0 + 5)), ["log:0", "log:1"], "w", 0)
    chunk_b, data_b = seen.remember(batch_of(("fuel", "t3", T0 + HOUR_MS)), None, "w", 1)
    restored = SeenIds(HOUR_MS)
    restored.load(chunk_a, data_a)
    restored.load(chunk_b, data_b)
    assert restored.first == seen.first
    assert restored.first_where("k\u00e9y", "t2") == "log:1" and restored.first_where("fuel", "t3") == ""
    # Chunk a expires when the watermark reaches its latest event time + horizon, not before.
    assert restored.expired_chunks(T0 + 5 + HOUR_MS - 1) == []
    assert restored.expired_chunks(T0 + 5 + HOUR_MS) == [chunk_a]
    assert sorted(key.split("\t")[1] for key in restored.first) == ["t3"]


def test_bytes_of_state_per_txn_id_are_what_docs_dedup_md_says():
    txn_id = "0b6f4a52-3c1e-4f7a-9d2b-5e8c1a7f3d90"  # a UUID, 36 characters
    source = "kafka:2:1000000:transactions"
    _, data = SeenIds(HOUR_MS).remember(batch_of(*[("grocery", f"{txn_id[:-4]}{i:04d}", T0 + i) for i in range(1000)],
                                                 source=source), None, "w", 0)
    # docs/dedup.md: model key + txn_id + 13-digit event time + source tag + 5 separators, plus the
    # chunk's version byte (and no separator after its last entry).
    assert len(data) == 1000 * (len("grocery") + 36 + 13 + len(source) + 5) - 1 + 1


def test_a_redelivery_dead_letter_names_its_first_delivery_and_has_no_raw_bytes():
    seen = SeenIds(HOUR_MS)
    seen.remember(batch_of(("fuel", "t1", T0), source="kafka:1:{line}7:transactions"), None, "w", 0)
    again = batch_of(("fuel", "t1", T0), source="file:{line}:/retries.jsonl")
    [duplicate] = seen.duplicates(again, T0)
    letter = orjson.loads(duplicate_dead_letter(again, duplicate, HOUR_MS, 2, 123))
    assert not violations("dead-letters", letter)
    assert letter["stage"] == "dedup" and letter["raw"] is None and letter["txn_id"] == "t1"
    assert letter["source"] == {"file": "/retries.jsonl", "line": 1}
    assert "2026-01-01T00:00:00.000Z" in letter["reason"] and "topic transactions partition 1 offset 17" in letter["reason"]
    assert "\n" not in letter["reason"]
    assert seen_line(again, 0) == b"t1\tfuel\t" + str(T0).encode() + b"\tfile:1:/retries.jsonl"


def test_a_feature_log_keeps_a_dropped_row_where_its_route_points():
    log = FeatureLog(["a", "c"], np.array([1, 3], np.int64), np.array([0.2, 0.4]), np.array([0, 2, 3], np.int64),
                     np.array([5, 6, 7], np.int32), np.array([0.5, 0.6, 0.7], np.float32))
    full = FeatureLog.from_bytes(with_dropped_rows(log, np.array([0, 2]), 3, ["a", "b", "c"]).to_bytes())
    assert full.model_keys == ["a", "b", "c"] and [is_dropped_row(full, row) for row in range(3)] == [False, True, False]
    assert full.entries(2)[0].tolist() == [7] and full.entries(1)[0].tolist() == [] and full.entries(0)[0].tolist() == [5, 6]
