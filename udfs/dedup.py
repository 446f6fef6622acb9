"""De-duplication by txn_id, the idempotency key (pure Python, no Flink; docs/dedup.md).

A transaction whose txn_id was already scored under the same model key, within `dedup.horizon_ms`
of event time, is a redelivery: it is neither scored nor learned from again, and becomes a dead
letter with stage `dedup` whose reason names the first delivery's event time and source position.
Only scored records are remembered, so a dead letter replayed after a fix is not a duplicate.

The check runs in the scoring operator, before a shard batch is scored: a redelivery has the same
model key as its first delivery, so it reaches the same shard, in the same per-key order, and no
exchange is added in front of scoring. A txn_id repeated under another model key is not a
redelivery of the same record; it is scored, and the job reports it (RepeatedIds.java, the
`repeated-ids` output).

A shard's remembered ids are kept in keyed map state as chunks, one per scored batch: chunk id ->
`chunk_bytes`. A chunk's id starts with the event time at which its last entry expires (the
latest first-delivery event time plus the horizon) and its entry count (udfs.feature_log.log_id_of),
so that a timer removes it whole once the watermark passes that time. Each entry is also checked
against its own expiry when a txn_id comes again, so what counts as a duplicate does not depend on
when chunks are removed. The chunk bytes are a state format: they do not change without a tested
migration.
"""

from __future__ import annotations

import heapq
from datetime import datetime, timezone
from typing import NamedTuple

import numpy as np
import orjson

from udfs.feature_log import expiry_of, log_id_of
from udfs.wire import RecordBatch, split_envelope

DEDUP_STAGE = "dedup"

# Chunk bytes: this version byte, then one entry per line, UTF-8: model key, txn_id, first event time
# (epoch ms), source tag, feature-log position ("" when labels are inline), separated by tabs
# (cleaned txn_ids and model keys hold no tab or newline; nor do source tags, see udfs/wire.py).
CHUNK_VERSION = b"\x01"


class FirstDelivery(NamedTuple):
    """The scored delivery of a txn_id under a model key, as remembered."""

    event_time: int  # epoch ms
    source: str  # the source tag of its envelope: "file:<line>:<path>" or "kafka:<partition>:<offset>:<topic>"
    where: str  # where its features are logged ("<log id>:<row>", udfs.feature_log.where), "" if not
    chunk: str  # the id of the chunk that holds it


class Duplicate(NamedTuple):
    """A record of a batch found to be a redelivery: its row in the batch and its first delivery."""

    row: int
    first: FirstDelivery


def _entry_key(model_key: str, txn_id: str) -> str:
    return f"{model_key}\t{txn_id}"


class SeenIds:
    """The txn_ids one shard scored within the horizon, in memory, loaded from and written to the
    shard's chunks by the caller (streaming/job/dedup.py). `horizon_ms` > 0."""

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self.first: dict[str, FirstDelivery] = {}
        self.chunks: dict[str, list[str]] = {}  # chunk id -> the entry keys it holds
        self.expiries: list[tuple[int, str]] = []  # a heap of (expiry in ms, chunk id)

    def __len__(self) -> int:
        return len(self.first)

    def load(self, chunk: str, data: bytes) -> None:
        """Adds the entries of a chunk read from state (`chunk_bytes`' format)."""
        if data[:1] != CHUNK_VERSION:
            raise ValueError(f"dedup chunk {chunk}: unknown version {data[:1]!r}")
        keys = []
        for line in data[1:].decode("utf-8", "surrogatepass").split("\n"):
            model_key, txn_id, event_time, source, where = line.split("\t")
            key = _entry_key(model_key, txn_id)
            self.first[key] = FirstDelivery(int(event_time), source, where, chunk)
            keys.append(key)
        self._add_chunk(chunk, keys)

    def _add_chunk(self, chunk: str, keys: list[str]) -> None:
        self.chunks[chunk] = keys
        heapq.heappush(self.expiries, (expiry_of(chunk)[0], chunk))

    def duplicates(self, batch: RecordBatch, watermark: int) -> list[Duplicate]:
        """The records of `batch` (in order) that redeliver a txn_id scored before under the same
        model key, by this shard or earlier in the batch, whose first delivery has not expired:
        the watermark (epoch ms, Flink's current one) has not reached its event time + horizon.
        Remembers nothing: `remember` does, once the batch is scored."""
        found = []
        earlier: dict[str, int] = {}  # key -> the row of its first record in this batch
        first, horizon = self.first, self.horizon_ms
        for row, (model_key, txn_id) in enumerate(zip(batch.model_keys, batch.txn_ids)):
            key = _entry_key(model_key, txn_id)
            seen = first.get(key)
            if seen is not None and watermark < seen.event_time + horizon:
                found.append(Duplicate(row, seen))
            elif key in earlier:  # the first delivery is described only when it has a redelivery
                first_row = earlier[key]
                found.append(Duplicate(row, FirstDelivery(int(batch.event_times[first_row]), batch.sources[first_row],
                                                          "", "")))
            else:
                earlier[key] = row
        return found

    def remember(self, batch: RecordBatch, wheres: list[str] | None, worker: str, counter: int
                 ) -> tuple[str, bytes] | None:
        """Remembers every record of `batch` (scored, no duplicates among them) as a first delivery,
        `wheres[r]` where record r's features are logged (None: not logged); returns the new chunk
        (id, bytes) to write to state, None for an empty batch. `worker` and `counter` make the id
        unique (udfs.feature_log.log_id_of)."""
        if not len(batch):
            return None
        event_times = batch.event_times.tolist()
        chunk = log_id_of(max(event_times) + self.horizon_ms, len(batch), worker, counter)
        keys, lines = [], []
        for row, (model_key, txn_id, event_time, source) in enumerate(
                zip(batch.model_keys, batch.txn_ids, event_times, batch.sources)):
            where = "" if wheres is None else wheres[row]
            key = _entry_key(model_key, txn_id)
            self.first[key] = FirstDelivery(event_time, source, where, chunk)
            keys.append(key)
            lines.append(f"{key}\t{event_time}\t{source}\t{where}")
        self._add_chunk(chunk, keys)
        return chunk, CHUNK_VERSION + "\n".join(lines).encode("utf-8", "surrogatepass")

    def expired_chunks(self, watermark: int) -> list[str]:
        """Forgets the chunks whose every entry expired by `watermark` (epoch ms) and returns their
        ids, for the caller to remove from state."""
        gone = []
        while self.expiries and self.expiries[0][0] <= watermark:
            _, chunk = heapq.heappop(self.expiries)
            for key in self.chunks.pop(chunk):
                seen = self.first.get(key)
                if seen is not None and seen.chunk == chunk:  # not remembered again by a later chunk
                    del self.first[key]
            gone.append(chunk)
        return gone

    def first_where(self, model_key: str, txn_id: str) -> str:
        """Where the first delivery of `txn_id` under `model_key` has its features logged; "" if
        none is remembered or it was not logged."""
        seen = self.first.get(_entry_key(model_key, txn_id))
        return "" if seen is None else seen.where


def without_rows(batch: RecordBatch, rows: list[int]) -> tuple[RecordBatch, np.ndarray]:
    """(`batch` without the records at `rows`, the positions in `batch` of the records kept)."""
    kept = np.setdiff1d(np.arange(len(batch)), np.asarray(rows, np.int64))
    return batch.take(kept), kept


def source_text(tag: str) -> str:
    """A source tag as words for a reason: "file <path> line <n>", "topic <t> partition <p> offset
    <o>", or "an unknown source"."""
    source, _ = split_envelope(tag + "\t")
    if "file" in source:
        return f"file {source['file']} line {source['line']}"
    if "topic" in source:
        return f"topic {source['topic']} partition {source['partition']} offset {source['offset']}"
    return "an unknown source"


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with milliseconds, e.g. 2026-01-01T00:00:00.000Z."""
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def duplicate_reason(first: FirstDelivery, horizon_ms: int) -> str:
    """The one-line reason of a redelivery's dead letter."""
    return (f"txn_id already scored under this model key within dedup.horizon_ms ({horizon_ms}): first "
            f"delivery event_time {iso_ms(first.event_time)} ({first.event_time}) from {source_text(first.source)}")


def duplicate_dead_letter(batch: RecordBatch, duplicate: Duplicate, horizon_ms: int, schema_version: int,
                          now_ms: int) -> bytes:
    """The dead letter of a redelivery (docs/contracts.md, dead letters, version 2 on): stage
    `dedup`, no raw bytes (the record was read and cleaned; its first delivery holds the same
    transaction, and replay never re-sends it), its own source coordinates and txn_id."""
    row = duplicate.row
    source, _ = split_envelope(batch.sources[row] + "\t")
    return orjson.dumps({"schema_version": schema_version, "raw": None, "raw_base64": None,
                         "account_ids_pseudonymized": False, "truncated": False, "stage": DEDUP_STAGE,
                         "reason": duplicate_reason(duplicate.first, horizon_ms), "source": source,
                         "txn_id": batch.txn_ids[row], "received_at": now_ms})


def seen_line(batch: RecordBatch, row: int) -> bytes:
    """What RepeatedIds.java learns of a scored record: txn_id, model key, event time (ms) and
    source tag, tab-separated, UTF-8."""
    return (f"{batch.txn_ids[row]}\t{batch.model_keys[row]}\t{int(batch.event_times[row])}\t"
            f"{batch.sources[row]}").encode("utf-8", "surrogatepass")
