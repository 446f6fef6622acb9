"""The data-parallel global model in the job (docs/design.md#global-model): the scoring operator
with the global model's versions as its second input, the aggregator, and the route between them.

    score-and-learn (keyed by shard) --partials (side output)--> aggregate-global-model (one subtask)
        ^  scores carry global_version                              | versions, exactly once
        +-- fan-out-versions <-- model-versions-source <-- kafka.model_versions_topic (output.kind kafka)
                                                           or <output.path>/model-versions/ (files)

Every decision is udfs/global_scoring.py's (the shards' protocol, the rounds, the final version);
this module keeps its state in Flink keyed state and routes what it returns.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import orjson
from pyflink.common import Types, WatermarkStrategy
from pyflink.datastream import (
    DataStream,
    KeyedCoProcessFunction,
    OutputTag,
    RuntimeContext,
    StreamExecutionEnvironment,
    TimeDomain,
)
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from streaming.config import Settings
from streaming.config.global_settings import versions_folder
from streaming.job import pyflink_internals as internals
from streaming.job.bundles import now_ms
from streaming.job.connectors import model_versions_file_source, model_versions_source
from streaming.job.identity import METRICS_GROUP
from streaming.job.java_operators import BYTES, SHARD_BATCH, java_operator
from streaming.job.scoring import ScoreShardWithLabelStream, ShardScoring
from udfs.feature_log import FeatureLog, expiry_of
from udfs.global_columns import standardized_entries
from udfs.global_scoring import VERSION_KEY, GlobalPart, Rounds, ShardGlobal, is_final, segment_bytes
from udfs.scoring import AssessedBatch
from udfs.wire import END_OF_INPUT, RecordBatch

# The scoring operator's partials for the aggregator (udfs.global_scoring.partial_bytes).
PARTIALS = OutputTag("global-partials", BYTES)
# The aggregator operator's only key: it runs as one subtask.
ONE_KEY = 0


def versions_by_shard(env: StreamExecutionEnvironment, settings: Settings) -> DataStream:
    """The global model's versions as (shard, message), one copy per shard (VersionFanOut.java),
    for the scoring operator's second input (keyed by shard there: `by_shard`). One reader: the
    topic has one partition, the folder one writer. Read from kafka.model_versions_topic when the
    outputs go to Kafka, else from the model-versions folder under output.path (no broker)."""
    if settings.output.kind == "kafka":
        source = model_versions_source(settings.kafka)
    else:
        folder = versions_folder(settings)
        folder.mkdir(parents=True, exist_ok=True)  # watched from the start; the sink writes it later
        source = model_versions_file_source(folder)
    versions = env.from_source(source, WatermarkStrategy.no_watermarks(),
                               "model-versions-source").uid("model-versions-source").set_parallelism(1)
    # Every fan-out subtask gets every version and emits its own shards' copies (VersionFanOut.java).
    return java_operator(versions.broadcast(), "fan-out-versions", lambda j, jvm: j.transform(
        "fan-out-versions", SHARD_BATCH.get_java_type_info(), jvm.riskstream.flink.VersionFanOut(settings.performance.shards)))


def aggregated(env: StreamExecutionEnvironment, scored: DataStream, rounds: Rounds, keyed: bool) -> DataStream:
    """The version lines the aggregator publishes from the scoring operator's partials (input 1):
    with `keyed` (Kafka) `global\t<message>`, the message key first, else the message alone
    (files). Input 2 is one element at the start (a one-number sequence source): it gives the
    aggregator a key to set its end-of-input timer with before any partial comes, so a bounded run
    whose input has no scorable record still ends (AggregateGlobal.on_timer)."""
    sequence = internals.jvm().org.apache.flink.api.connector.source.lib.NumberSequenceSource(0, 0)
    start = env.from_source(internals.source_of(sequence), WatermarkStrategy.no_watermarks(), "global-model-start",
                            type_info=Types.LONG()).uid("global-model-start").set_parallelism(1)
    return scored.get_side_output(PARTIALS).key_by(lambda partial: ONE_KEY, key_type=Types.INT()).connect(
        start.key_by(lambda number: ONE_KEY, key_type=Types.INT())).process(
        AggregateGlobal(rounds, keyed), output_type=BYTES).name("aggregate-global-model").uid(
        "aggregate-global-model").set_parallelism(1).set_max_parallelism(1)


class GlobalShards:
    """What both scoring operators with the global model do with it (not a Flink function: they
    own one). Each shard keeps its udfs.global_scoring.ShardGlobal in keyed value state: the
    version it holds (`global-version`, so that a restore resumes with it and never mixes it with
    another) and the records its next partial covers with where it is in the protocol
    (`global-shard`). Partials go to PARTIALS. Call the methods that take a shard while it is the
    operator's current key."""

    def __init__(self, part: GlobalPart, learn_inline: bool):
        self.part = part
        self.learn_inline = learn_inline
        self.state = None
        self.version_state = None
        self.shards: dict[int, ShardGlobal] = {}
        self.applied = None
        self.sent = None

    def open(self, runtime_context: RuntimeContext, scoring: ShardScoring) -> None:
        scoring.blend = self.blend
        scoring.held = self.held
        # Pickled bytes, as the models (see ShardModels.open). The held version apart, as it
        # changes once per version, the rest with every batch.
        self.state = runtime_context.get_state(ValueStateDescriptor("global-shard", Types.PICKLED_BYTE_ARRAY()))
        self.version_state = runtime_context.get_state(ValueStateDescriptor("global-version",
                                                                            Types.PICKLED_BYTE_ARRAY()))
        # The pending records by segment (ShardGlobal.segments): a batch writes its own only.
        self.segments = runtime_context.get_map_state(MapStateDescriptor("global-pending", Types.INT(),
                                                                         Types.PICKLED_BYTE_ARRAY()))
        self.shards = {}
        metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.applied = metrics.counter("global_versions_applied")
        self.sent = metrics.counter("global_partials_sent")

    def held(self, shard: int):
        """ShardScoring.held: the GlobalModel version the shard holds."""
        return self.of(shard).held

    def blend(self, shard: int, batch: RecordBatch, assessed: AssessedBatch) -> tuple[AssessedBatch, bytes]:
        """ShardScoring.blend: with model.blend global the batch scored by the shard's version; with
        key and sum the key models' code scored it already (ModelScorer.assess_columns, given the
        version). Every score names the version."""
        held = self.of(shard).held
        if self.part.blend == "global":
            assessed = self.part.scored(held, batch, assessed)
        return assessed, b',"global_version":%d' % held.version

    def scored(self, shard: int, batch: RecordBatch, assessed: AssessedBatch) -> Iterator:
        """Keeps a scored batch's records for the shard's partials (under model.blend sum with the key
        margin each was scored with, so that the global model learns from the same error); sends
        those due."""
        held = self.of(shard)
        self.part.add(held, batch, self.learn_inline, assessed.key_margin if self.part.blend == "sum" else None)
        self.kept(held, len(batch))
        yield from self.send(shard, held)

    def kept(self, held: ShardGlobal, records: int) -> None:
        """Writes the last `records` pending records of the shard as a new segment."""
        if records:
            pending = held.pending
            self.segments.put(held.added(records), segment_bytes(pending.split(len(pending) - records)[1]))

    def version(self, shard: int, message: bytes, ctx) -> Iterator:
        """A version message on the shard's way: applied when newer; sends the partials due."""
        held = self.of(shard)
        if self.part.offer(held, message):
            self.applied.inc()
            self.version_state.update(message)
        if self.part.cadence_ms is not None and self.part.max_staleness == 0 and not is_final(message):
            # The latest time this shard sends against the version it holds now (GlobalPart.overdue).
            ctx.timer_service().register_processing_time_timer(now_ms() + self.part.cadence_ms)
        if not held.ended and ctx.timer_service().current_watermark() == END_OF_INPUT:
            # A shard that first hears of the global model after its input ended (it never had a
            # record): its end-of-input timer, set just now, would never fire.
            held.ended = True
        if is_final(message):
            held.last_sent = True  # nothing more to send
        yield from self.send(shard, held)

    def overdue(self, shard: int) -> Iterator:
        held = self.of(shard)
        yield from self.emit(held, self.part.overdue(held, shard))

    def ended(self, shard: int) -> Iterator:
        held = self.of(shard)
        held.ended = True
        yield from self.send(shard, held)

    def send(self, shard: int, held: ShardGlobal) -> Iterator:
        yield from self.emit(held, self.part.partials(held, shard))

    def emit(self, held: ShardGlobal, partials: list[bytes]) -> Iterator:
        for partial in partials:
            self.sent.inc()
            yield PARTIALS, partial
        gone, rest = held.settle()
        for number in gone:
            self.segments.remove(number)
        if rest is not None:
            self.segments.put(rest[0], segment_bytes(rest[1]))
        self.state.update(held.to_bytes())

    def of(self, shard: int) -> ShardGlobal:
        """The shard's global-model state, read from keyed state the first time this worker needs it."""
        held = self.shards.get(shard)
        if held is None:
            data, message = self.state.value(), self.version_state.value()
            held = self.part.new_shard()
            if data is not None:
                numbers = [number for number, _ in orjson.loads(data)["segments"]]
                held = ShardGlobal.from_bytes(data, held.held_message if message is None else message,
                                              [self.segments.get(number) for number in numbers],
                                              self.part.feature_names)
            self.shards[shard] = held
        return held


class ScoreShardWithVersions(KeyedCoProcessFunction):
    """ScoreShard (input 1: shard batches) scoring with the global model too (model.blend global),
    its versions on input 2 ((shard, version message), every shard a copy): GlobalShards."""

    def __init__(self, scoring: ShardScoring, part: GlobalPart, learn_inline: bool):
        self.scoring = scoring
        self.globals = GlobalShards(part, learn_inline)

    def open(self, runtime_context: RuntimeContext):
        self.scoring.open(runtime_context)
        self.globals.open(runtime_context, self.scoring)

    def process_element1(self, shard_batch, ctx):
        yield from self.scoring.score(shard_batch, ctx, self._after_scoring)

    def process_element2(self, shard_version, ctx):
        shard, message = shard_version
        self.scoring.models.time_final_snapshots(shard, ctx)
        yield from self.globals.version(shard, message, ctx)

    def on_timer(self, timestamp, ctx):
        shard = ctx.get_current_key()
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            yield from self.globals.overdue(shard)
            return
        self.scoring.expire(shard, timestamp)
        if timestamp == END_OF_INPUT:
            yield from self.scoring.final_snapshots(shard)
            yield from self.globals.ended(shard)

    def _after_scoring(self, shard: int, batch: RecordBatch, assessed, log_id, ctx, dropped=None) -> Iterator:
        yield from self.globals.scored(shard, batch, assessed)


class ScoreShardWithLabelStreamAndVersions(ScoreShardWithLabelStream):
    """ScoreShardWithLabelStream whose second input also carries the global model's versions (one
    copy per shard, unioned with the routed labels: a version message is JSON, `{...`, a routed
    label bundle starts with its shard number). The global model learns from the labels the key
    models learn from: each scored batch's raw features are logged beside its feature log
    (`global-raw-log`, log id -> float64 values, removed with it), and an applied label adds its
    record, labelled and not counted in the statistics again, to the shard's next partial."""

    _learns_in_columns = False  # _global_margin and _learned see each label's step

    def __init__(self, scoring: ShardScoring, rules, snapshot_every: int, part: GlobalPart, learn_inline: bool):
        super().__init__(scoring, rules, snapshot_every)
        self.globals = GlobalShards(part, learn_inline)
        self.raw_logs = None

    def open(self, runtime_context: RuntimeContext):
        super().open(runtime_context)
        self.globals.open(runtime_context, self.scoring)
        self.raw_logs = runtime_context.get_map_state(MapStateDescriptor("global-raw-log", Types.STRING(),
                                                                         Types.PICKLED_BYTE_ARRAY()))
        self.raw_cache = (None, None)

    def process_element1(self, shard_batch, ctx):
        yield from self.scoring.score(shard_batch, ctx, self._after_scoring)

    def process_element2(self, shard_bundle, ctx):
        shard, bundle = shard_bundle
        if bundle[:1] == b"{":
            self.scoring.models.time_final_snapshots(shard, ctx)
            yield from self.globals.version(shard, bundle, ctx)
        else:
            yield from super().process_element2(shard_bundle, ctx)

    def on_timer(self, timestamp, ctx):
        shard = ctx.get_current_key()
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            yield from self.globals.overdue(shard)
            return
        for log_id in [log_id for log_id in self._logs_of(shard) if expiry_of(log_id)[0] <= timestamp]:
            self.raw_logs.remove(log_id)
        self.raw_cache = (None, None)
        yield from super().on_timer(timestamp, ctx)
        if timestamp == END_OF_INPUT:
            yield from self.globals.ended(shard)

    def _after_scoring(self, shard: int, batch: RecordBatch, assessed, log_id, ctx, dropped=None) -> Iterator:
        if log_id is not None:  # before the labels waiting for this log are applied
            # The scored records' values: a redelivery's row in the feature log has no entries.
            self.raw_logs.put(log_id, np.asarray(batch.values, np.float64).tobytes())
        yield from self._log_features(shard, batch, assessed, log_id, ctx, dropped)
        yield from self.globals.scored(shard, batch, assessed)

    def _raw(self, log: FeatureLog, log_id: str, row: int) -> np.ndarray | None:
        """The raw values of the record at `row` of the log (None: logged before the global model
        was on, a savepoint of such a run); the last log read is kept (a bundle's labels share logs)."""
        if self.raw_cache[0] is not log:  # the log's object: log ids are per shard
            self.raw_cache = (log, self.raw_logs.get(log_id))
        raw = self.raw_cache[1]
        return None if raw is None else np.frombuffer(raw, np.float64)[int(log.indptr[row]):int(log.indptr[row + 1])]

    def _global_margin(self, shard: int, log: FeatureLog, log_id: str, row: int) -> float | None:
        """model.blend sum: the label's record's global margin by the version the shard holds now,
        from its raw values (standardized by that version, as GlobalModel.margin sums)."""
        raw = self._raw(log, log_id, row) if self.globals.part.blend == "sum" else None
        if raw is None:
            return None
        held = self.globals.of(shard).held
        indices = log.indices[int(log.indptr[row]):int(log.indptr[row + 1])]
        return held.margin(indices.tolist(), standardized_entries(held, indices.astype(np.int64), raw).tolist())

    def _learned(self, shard: int, log: FeatureLog, log_id: str, row: int, is_fraud: int, key_margin: float) -> None:
        values = self._raw(log, log_id, row)
        if values is None:
            return
        start, end = int(log.indptr[row]), int(log.indptr[row + 1])
        held = self.globals.of(shard)
        held.pending = held.pending.appended([0, end - start], log.indices[start:end], values, [is_fraud],
                                             counted=False, offsets=[key_margin])
        self.globals.kept(held, 1)

    def _apply(self, shard: int, routed_labels, ctx):
        yield from super()._apply(shard, routed_labels, ctx)
        yield from self.globals.send(shard, self.globals.of(shard))


class AggregateGlobal(KeyedCoProcessFunction):
    """Combines the shards' partials into versions (udfs.global_scoring.Rounds around
    udfs.global_model.Aggregator), its state as bytes in keyed value state; emits each version as
    one line for the model-versions sink (`global\\t<message>` when `keyed`, else the message).
    With model.global.cadence_ms and max_staleness above 0, a processing-time timer publishes what
    is pending on that cadence."""

    def __init__(self, rounds: Rounds, keyed: bool = True):
        self.initial = rounds
        self.prefix = VERSION_KEY.encode("utf-8") + b"\t" if keyed else b""
        self.rounds = None
        self.state = None
        self.published = None

    def open(self, runtime_context: RuntimeContext):
        self.state = runtime_context.get_state(ValueStateDescriptor("global-aggregator", Types.PICKLED_BYTE_ARRAY()))
        self.rounds = None
        metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.published = metrics.counter("global_versions_published")
        metrics.gauge("global_partials_dropped_stale", lambda: 0 if self.rounds is None
                      else self.rounds.aggregator.dropped_stale)

    def process_element1(self, partial, ctx):
        rounds = self._rounds()
        now = now_ms()
        messages = rounds.add(partial, now)
        aggregator = rounds.aggregator
        if aggregator.cadence_ms is not None and aggregator.max_staleness > 0 and not rounds.finished:
            ctx.timer_service().register_processing_time_timer(now + aggregator.cadence_ms)
        yield from self._publish(messages)

    def process_element2(self, start, ctx):
        # Once at the start (again after a restore: setting the timer twice is harmless).
        ctx.timer_service().register_event_time_timer(END_OF_INPUT)

    def on_timer(self, timestamp, ctx):
        rounds = self._rounds()
        if rounds.finished:
            return
        if ctx.time_domain() == TimeDomain.EVENT_TIME:  # END_OF_INPUT: the partials' input ended
            yield from self._publish(rounds.ended())
        else:
            yield from self._publish(rounds.tick(now_ms()))

    def _publish(self, messages: list[bytes]) -> Iterator[bytes]:
        self.state.update(self.rounds.to_bytes())
        for message in messages:
            self.published.inc()
            yield self.prefix + message

    def _rounds(self) -> Rounds:
        if self.rounds is None:
            data = self.state.value()
            self.rounds = self.initial if data is None else Rounds.from_bytes(data, self.initial.aggregator)
        return self.rounds

