"""De-duplication in the scoring operators: each shard's remembered txn_ids in keyed state, the
in-memory copy the worker checks batches against, and the expiry of both (udfs/dedup.py decides
what is a redelivery)."""

from __future__ import annotations

import secrets

import numpy as np
from pyflink.common import Types
from pyflink.datastream import RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from streaming.job.identity import METRICS_GROUP
from udfs.dedup import DEDUP_STAGE, SeenIds, duplicate_dead_letter, seen_line, without_rows
from udfs.feature_log import expiry_of, where
from udfs.records import DeadLetter
from udfs.wire import JAVA_LONG_MIN, NO_WATERMARK, RecordBatch


class ShardDedup:
    """The txn_ids the shards of one scoring subtask scored within `horizon_ms` (ms of event time).

    Keyed map state (chunk id -> chunk bytes, udfs.dedup.SeenIds.remember) is the record; the worker
    keeps each shard's ids in memory (SeenIds), read whole from state the first time it sees the
    shard after a start or restore, as ShardModels does with models. Call the methods that take a
    shard while that shard is the operator's current key."""

    def __init__(self, horizon_ms: int, dead_letter_version: int):
        self.horizon_ms = horizon_ms
        self.dead_letter_version = dead_letter_version
        self.state = None
        self.shards: dict[int, SeenIds] = {}
        self.worker = ""
        self.chunks_made = 0
        self.dead_lettered = None

    def open(self, runtime_context: RuntimeContext) -> None:
        # Plain bytes would do; pickled, as every other map state of these operators (see
        # ShardModels.open: thread mode converts PRIMITIVE_ARRAY(BYTE) values byte by byte).
        self.state = runtime_context.get_map_state(MapStateDescriptor("dedup-txn-ids", Types.STRING(),
                                                                      Types.PICKLED_BYTE_ARRAY()))
        self.shards = {}
        self.worker = secrets.token_hex(6)  # chunk ids unique across workers and runs
        self.chunks_made = 0
        metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.dead_lettered = metrics.add_group("stage", DEDUP_STAGE).counter("dead_lettered")
        metrics.gauge("dedup_txn_ids", self.remembered)

    def seen(self, shard: int) -> SeenIds:
        """The shard's remembered ids, loaded from state the first time this worker needs them."""
        seen = self.shards.get(shard)
        if seen is None:
            seen = self.shards[shard] = SeenIds(self.horizon_ms)
            for chunk, data in self.state.items():
                seen.load(chunk, data)
        return seen

    def drop_redeliveries(self, shard: int, batch: RecordBatch, flink_watermark: int, now_ms: int
                          ) -> tuple[RecordBatch, np.ndarray | None, list[DeadLetter]]:
        """(the batch without its redeliveries, the positions in `batch` of the records kept or None
        when all are, the redeliveries' dead letters in order)."""
        watermark = NO_WATERMARK if flink_watermark == JAVA_LONG_MIN else flink_watermark
        duplicates = self.seen(shard).duplicates(batch, watermark)
        if not duplicates:
            return batch, None, []
        letters = [DeadLetter(duplicate_dead_letter(batch, duplicate, self.horizon_ms, self.dead_letter_version,
                                                    now_ms).decode("utf-8"), batch.txn_ids[duplicate.row], DEDUP_STAGE)
                   for duplicate in duplicates]
        self.dead_lettered.inc(len(letters))
        kept_batch, kept = without_rows(batch, [duplicate.row for duplicate in duplicates])
        return kept_batch, kept, letters

    def remember(self, shard: int, batch: RecordBatch, log_id: str | None, kept: np.ndarray | None, ctx) -> bytes:
        """Remembers the scored records of `batch` (those kept, at positions `kept` of the shard
        batch whose features are logged under `log_id`, if any) in memory and state, with a timer
        to forget them; returns their lines for RepeatedIds.java (udfs.dedup.seen_line), b"" for none."""
        if not len(batch):
            return b""
        wheres = None
        if log_id is not None:
            rows = range(len(batch)) if kept is None else kept.tolist()
            wheres = [where(log_id, row) for row in rows]
        chunk, data = self.seen(shard).remember(batch, wheres, self.worker, self.chunks_made)
        self.chunks_made += 1
        self.state.put(chunk, data)
        ctx.timer_service().register_event_time_timer(expiry_of(chunk)[0])
        return b"\n".join(seen_line(batch, row) for row in range(len(batch)))

    def expire(self, shard: int, timestamp: int) -> None:
        """Forgets the shard's chunks whose entries all expired by the event time `timestamp` (ms)."""
        for chunk in self.seen(shard).expired_chunks(timestamp):
            self.state.remove(chunk)

    def remembered(self) -> int:
        """Txn ids this worker holds in memory (a shard's count from its first use after a start)."""
        return sum(len(seen) for seen in self.shards.values())
