"""The global model inside the job (pure Python, no Flink): what one shard of the scoring operator
does with it, and what the aggregator operator does with the shards' partials.

A shard (`ShardGlobal`) holds one published version (udfs/global_model.py), scores each batch with
it (`GlobalPart.margins`, numpy over the batch's sparse columns), keeps the raw features of the
records it scored since its last partial, and sends partials (`GlobalPart.partials`) on this
protocol, where `share` = ceil(model.global.cadence_records / shards):

- `max_staleness` 0 (synchronous): a shard sends at most one partial per version it holds, of all
  the records it kept, once they hold at least `share` labelled ones (or its input ended, or, with
  cadence_ms, that long after it got the version: `overdue`); version v + 1 is published when every
  shard has sent its partial against v. Each version names how many records each shard's partial
  covered (`records_by_shard`), so its mini-batch can be rebuilt from the shards' records in
  arrival order: a test holds the job's versions to `train_sequential` on those mini-batches.
- `max_staleness` k > 0: a shard sends a partial every `share` labelled records against whatever
  version it holds (the aggregator drops one more than k versions old), the rest at the end.

The partial that empties a shard after the end of its input is marked `last`. The aggregator side
(`Rounds`) publishes the version after which every shard has sent its last partial as the `final`
one: the versions source stops there, so a bounded run ends (docs/design.md#global-model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import orjson

from udfs.global_columns import Pending, arrays_of, partial_of, sigmoid, standardized_entries
from udfs.global_model import Aggregator, GlobalModel, GradientPartial, Statistics
from udfs.scoring import AssessedBatch
from udfs.wire import RecordBatch

# The marker of the last version of a bounded run, spliced into its message (the Java versions
# source looks for exactly these bytes: riskstream.flink.UntilFinalVersionSource).
FINAL_MARKER = b'"final":true'
# The message key of every version (one key: a compacted topic keeps the latest for a new reader).
VERSION_KEY = "global"


def share_of(cadence_records: int, shards: int) -> int:
    """Labelled records per shard and partial (>= 1)."""
    return max(1, math.ceil(cadence_records / shards))


def version_message(model: GlobalModel, partials: Sequence[GradientPartial] = (), final: bool = False,
                    dropped_stale_records: int = 0) -> bytes:
    """`model`'s message (GlobalModel.to_message) with what the job adds about the `partials` its
    step applied: `oldest_base_version`, the oldest version one was computed against (null: none;
    with model.global.max_staleness k, version - 1 - oldest_base_version <= k), and
    `records_by_shard`, how many records (counted in the statistics) each shard's covered; with
    `dropped_stale_records` (labelled records of the partials dropped as too stale so far, over the
    run) and, for the last version of a bounded run, `"final":true`."""
    records: dict[str, int] = {}
    for partial in partials:
        if partial.statistics.count:
            records[str(partial.instance)] = records.get(str(partial.instance), 0) + partial.statistics.count
    oldest = min((partial.base_version for partial in partials), default=None)
    fields = orjson.dumps({"oldest_base_version": oldest, "records_by_shard": records,
                           "dropped_stale_records": dropped_stale_records})
    return model.to_message()[:-1] + b"," + fields[1:-1] + (b"," + FINAL_MARKER if final else b"") + b"}"


def final_message(model: GlobalModel) -> bytes:
    """`model`'s message marked as the last version of a bounded run."""
    return version_message(model, final=True)


def is_final(message: bytes) -> bool:
    return FINAL_MARKER in message


def partial_bytes(partial: GradientPartial, last: bool) -> bytes:
    """A partial on the edge to the aggregator: b"L" (the shard's last) or b"P", then its JSON."""
    return (b"L" if last else b"P") + partial.to_bytes()


def read_partial(data: bytes) -> tuple[GradientPartial, bool]:
    return GradientPartial.from_bytes(data[1:]), data[:1] == b"L"


@dataclass
class ShardGlobal:
    """One shard's global-model state: the version it holds, the records it scored since its last
    partial (raw features, columns: udfs.global_columns.Pending), the version of its last partial
    (-1: none yet), whether its input ended and whether it sent its last partial.

    In keyed state the pending records are kept as segments (one per batch or label, numbered in
    order: `segments` holds [number, records] of each, `next_segment` the next number), so that a
    batch writes only its own records, not all those waiting; `to_bytes` / `from_bytes` keep the
    rest. `settle` says which segments the partials sent since the last call used up."""

    held: GlobalModel
    pending: Pending = field(default_factory=Pending.empty)
    sent_for: int = -1
    ended: bool = False
    last_sent: bool = False
    held_message: bytes = b""  # the held version's message as it came (kept in state apart)
    segments: list[list[int]] = field(default_factory=list)
    next_segment: int = 0
    consumed: int = 0  # records sent in partials since the last `settle`

    def added(self, records: int) -> int:
        """Notes a new segment of `records` pending records (the last ones); returns its number."""
        number = self.next_segment
        self.next_segment += 1
        self.segments.append([number, records])
        return number

    def settle(self) -> tuple[list[int], tuple[int, Pending] | None]:
        """(the segments the partials sent since the last call used up entirely, and the one they
        used in part with the records it has left, or None)."""
        gone, count = [], self.consumed
        self.consumed = 0
        while count and count >= self.segments[0][1]:
            number, records = self.segments.pop(0)
            gone.append(number)
            count -= records
        if not count:
            return gone, None
        self.segments[0][1] -= count
        number, left = self.segments[0]
        return gone, (number, self.pending.split(left)[0])

    def to_bytes(self) -> bytes:
        """Everything but the held version (`held_message`) and the pending records (segments)."""
        return orjson.dumps({"sent_for": self.sent_for, "ended": self.ended, "last_sent": self.last_sent,
                             "segments": self.segments, "next_segment": self.next_segment})

    @classmethod
    def from_bytes(cls, data: bytes, held_message: bytes, segments: Sequence[bytes],
                   feature_names: Sequence[str]) -> "ShardGlobal":
        """The state `to_bytes` saved, with its held version's message and its segments' bytes
        (`segment_bytes`), in its segments' order."""
        d = orjson.loads(data)
        pending = Pending.empty()
        for segment in segments:
            piece = Pending.of_plain(orjson.loads(segment))
            pending = pending.appended(piece.indptr, piece.indices, piece.values, piece.labels,
                                       offsets=piece.offsets)
            pending.counted[len(pending) - len(piece):] = piece.counted
        return cls(GlobalModel.from_message(held_message, feature_names), pending, d["sent_for"], d["ended"],
                   d["last_sent"], held_message, d["segments"], d["next_segment"])


def segment_bytes(piece: Pending) -> bytes:
    """A segment of pending records as state bytes (JSON of Pending.plain)."""
    return orjson.dumps(piece.plain())


class GlobalPart:
    """The global model's part in a scoring operator: scoring a batch with a shard's held version,
    and the partials the shard sends (see the module docstring)."""

    def __init__(self, feature_names: Sequence[str], positions: Sequence[int], initial_bias: float,
                 max_staleness: int, share: int, cadence_ms: int | None = None, blend: str = "global"):
        self.blend = blend  # model.blend: global scores with `scored`; key and sum in the key models' code
        self.feature_names = tuple(feature_names)
        self.positions = tuple(positions)
        self.initial_bias = initial_bias
        self.max_staleness = max_staleness
        self.share = share
        self.cadence_ms = cadence_ms  # synchronous mode: see `overdue`

    def new_shard(self) -> ShardGlobal:
        initial = GlobalModel.initial(self.feature_names, self.positions, self.initial_bias)
        return ShardGlobal(initial, held_message=initial.to_message())

    def margins(self, model: GlobalModel, batch: RecordBatch) -> np.ndarray:
        """Each record's global margin w . x + b (float64, one per record), x standardized by the
        version's statistics as `GlobalModel.standardize` does (numpy over the batch's columns)."""
        return self.contributions(model, batch)[0]

    def contributions(self, model: GlobalModel, batch: RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """(`margins`, each feature entry's contribution w_i x_i, one per entry of batch.indices)."""
        n = len(batch)
        indices = np.asarray(batch.indices, np.int64)
        x = standardized_entries(model, indices, np.asarray(batch.values, np.float64))
        rows = np.repeat(np.arange(n), np.diff(np.asarray(batch.indptr, np.int64)))
        contribution = arrays_of(model).weights[indices] * x
        return model.regression.bias + np.bincount(rows, weights=contribution, minlength=n), contribution

    def scored(self, model: GlobalModel, batch: RecordBatch, assessed: AssessedBatch) -> AssessedBatch:
        """`assessed` (the key models' view of the batch) with the global model's probabilities and
        reasons instead (model.blend global): the reasons are the entries of largest |w_i x_i|."""
        margins, contribution = self.contributions(model, batch)
        top = assessed.reason_index.shape[1]
        n = len(batch)
        reason_index = np.zeros_like(assessed.reason_index)
        reason_value = np.zeros_like(assessed.reason_value)
        indptr = np.asarray(batch.indptr, np.int64)
        lengths = np.diff(indptr)
        rows = np.repeat(np.arange(n), lengths)
        # Each row's entries by |contribution|, largest first (ties: in feature order), then the
        # first `top` of each row.
        order = np.lexsort((np.arange(len(rows)), -np.abs(contribution), rows))
        rank = np.arange(len(rows)) - indptr[rows[order]]
        chosen = order[rank < top]
        at_row, at_rank = rows[chosen], (rank[rank < top])
        reason_index[at_row, at_rank] = np.asarray(batch.indices)[chosen]
        reason_value[at_row, at_rank] = contribution[chosen]
        reason_count = np.minimum(lengths, top).astype(assessed.reason_count.dtype)
        probability = sigmoid(margins)
        return assessed._replace(probability=probability, reason_index=reason_index, reason_value=reason_value,
                                 reason_count=reason_count)

    def add(self, shard: ShardGlobal, batch: RecordBatch, learn_labels: bool, offsets: np.ndarray | None = None
            ) -> None:
        """Keeps the batch's records (raw features; labels when `learn_labels`; `offsets`: model.blend
        sum's key margin each was scored with, None: 0.0) for the shard's partials."""
        labels = batch.labels if learn_labels else np.full(len(batch), -1, np.int8)
        shard.pending = shard.pending.appended(batch.indptr, batch.indices, batch.values, labels, offsets=offsets)

    def offer(self, shard: ShardGlobal, message: bytes) -> bool:
        """Applies a version message when it is newer than the held version; True if it did."""
        candidate = GlobalModel.from_message(message, self.feature_names)
        if candidate.version <= shard.held.version:
            return False
        shard.held, shard.held_message = candidate, message
        return True

    def partials(self, shard: ShardGlobal, instance: int) -> list[bytes]:
        """The partials (edge bytes) the shard sends now, by the protocol of the module docstring;
        `shard.pending` keeps what they do not cover."""
        out = []
        if shard.last_sent:
            return out
        if self.max_staleness == 0:
            if shard.sent_for < shard.held.version and (shard.ended or shard.pending.cut(self.share) is not None):
                out.append(self._send(shard, instance, len(shard.pending)))
            return out
        while (cut := shard.pending.cut(self.share)) is not None:
            out.append(self._send(shard, instance, cut))
        if shard.ended:
            out.append(self._send(shard, instance, len(shard.pending)))
        return out

    def overdue(self, shard: ShardGlobal, instance: int) -> list[bytes]:
        """Synchronous mode with model.global.cadence_ms: the partial a shard sends when that long
        passed since it got its version and it has not sent against it yet: whatever it has
        (possibly nothing), so that a shard with few or no records does not hold a round open."""
        if self.max_staleness != 0 or shard.last_sent or shard.sent_for >= shard.held.version:
            return []
        return [self._send(shard, instance, len(shard.pending))]

    def _send(self, shard: ShardGlobal, instance: int, count: int) -> bytes:
        sent, shard.pending = shard.pending.split(count)
        shard.consumed += count
        last = shard.ended and not len(shard.pending)
        shard.sent_for = shard.held.version
        shard.last_sent = last
        return partial_bytes(partial_of(shard.held, sent, instance), last)


@dataclass
class Rounds:
    """The aggregator operator's logic around udfs.global_model.Aggregator: which shards sent their
    last partial, and whether version 0 was announced (so that shards that never saw a record
    learn of the global model and take part in the end of a bounded run). `add` returns the version
    messages to publish, the last one marked final when every shard is done."""

    aggregator: Aggregator
    done: set[int] = field(default_factory=set)
    announced: bool = False
    finished: bool = False

    def add(self, data: bytes, now_ms: int) -> list[bytes]:
        partial, last = read_partial(data)
        out = []
        aggregator = self.aggregator
        if not self.announced:
            self.announced = True
            out.append(aggregator.model.to_message())
        if last:
            self.done.add(partial.instance)
        made_of = list(aggregator.pending)
        dropped = aggregator.dropped_stale
        version = aggregator.add(partial, now_ms)
        if aggregator.dropped_stale == dropped:  # not too stale: in the pool (and maybe in `version`)
            made_of.append(partial)
        every_shard_done = len(self.done) == aggregator.instances
        if aggregator.max_staleness == 0:
            if version is not None:
                if every_shard_done:
                    self.finished = True
                    return out + [version_message(version, made_of, True, aggregator.dropped_stale_records)]
                out.append(version_message(version, made_of, False, aggregator.dropped_stale_records))
                # A shard that is done sends no more: it takes part in the next round with nothing.
                for instance in sorted(self.done):
                    aggregator.add(self._nothing(instance), now_ms)
            return out
        if version is not None:
            out.append(version_message(version, made_of, False, aggregator.dropped_stale_records))
        if every_shard_done and not self.finished:
            made_of = list(aggregator.pending)
            out.append(version_message(aggregator.flush(now_ms), made_of, True, aggregator.dropped_stale_records))
            self.finished = True
        return out

    def ended(self) -> list[bytes]:
        """At the end of a bounded run's input: version 0 when no partial ever came (the input had no
        record a shard could score), so that the shards, which first hear of the global model
        then, send their last partials and the run can end with a final version; else nothing."""
        if self.announced:
            return []
        self.announced = True
        return [self.aggregator.model.to_message()]

    def tick(self, now_ms: int) -> list[bytes]:
        """The aggregator's time cadence (asynchronous mode): the version it publishes, if any."""
        made_of = list(self.aggregator.pending)
        version = self.aggregator.tick(now_ms)
        return [] if version is None else [version_message(version, made_of, False,
                                                           self.aggregator.dropped_stale_records)]

    def _nothing(self, instance: int) -> GradientPartial:
        return GradientPartial(instance, self.aggregator.model.version, 0, {}, 0.0,
                               Statistics.empty(len(self.aggregator.model.positions)))

    def to_bytes(self) -> bytes:
        return orjson.dumps({"aggregator": orjson.loads(self.aggregator.to_bytes()), "done": sorted(self.done),
                             "announced": self.announced, "finished": self.finished})

    @classmethod
    def from_bytes(cls, data: bytes, like: Aggregator) -> "Rounds":
        """The rounds `to_bytes` saved, with `like`'s (configured) aggregator settings."""
        d = orjson.loads(data)
        aggregator = Aggregator.from_bytes(orjson.dumps(d["aggregator"]), like.model.feature_names, like.optimizer,
                                           like.instances, like.max_staleness, like.cadence_records, like.cadence_ms)
        return cls(aggregator, set(d["done"]), d["announced"], d["finished"])
