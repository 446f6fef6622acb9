"""The scoring job: `build_job(env, settings)` wires source -> read -> key_by -> model -> sinks.

Every decision about a record is made by `udfs/`; the functions here only hand records to it and
route what comes back (scores, dead letters, snapshots) to sinks.
"""

from __future__ import annotations

import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, Sequence

from pyflink.common import (
    CompletableFuture,
    Configuration,
    Duration,
    Encoder,
    JobClient,
    JobExecutionResult,
    Types,
    WatermarkStrategy,
)
from pyflink.datastream import (
    DataStream,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.connectors import Sink, Source
from pyflink.datastream.connectors.file_system import (
    BucketAssigner,
    BulkFormat,
    FileSink,
    FileSource,
    OutputFileConfig,
    RollingPolicy,
)
from pyflink.datastream.connectors.kafka import KafkaOffsetResetStrategy, KafkaOffsetsInitializer
from pyflink.datastream.state import MapStateDescriptor

from streaming.config import LabelSourceSettings, Settings, SourceSettings
from streaming.config.flink_options import flink_options
from streaming.config.from_settings import model_scorer, transaction_reader, windowing
from streaming.job import pyflink_internals as internals
from streaming.job.identity import JOB_NAME, METRICS_GROUP
from udfs.analytics import Windowing, late_records
from udfs.cleaning import Rejected
from udfs.feature_log import FeatureLog, expiry_of, log_id_of, log_position, where
from udfs.label_outcomes import (
    APPLIED,
    HOLD,
    OUTCOMES,
    label_dead_letter,
    label_disposition,
    learning_line,
    outcome_reason,
    routed_outcome,
)
from udfs.labels import read_label
from udfs.live_metrics import DEAD_LETTER_STAGES, RecentLogLoss, dead_letters_by_stage, records_in_bundle
from udfs.metrics import SCORE_CLIP
from udfs.model import Sgd
from udfs.ordering import BundleSequencer
from udfs.reading import TransactionReader
from udfs.records import KeyedLine
from udfs.scoring import ModelScorer, compile_model_code
from udfs.wire import (
    END_OF_INPUT,
    JAVA_LONG_MIN,
    NO_WATERMARK,
    RecordBatch,
    RoutedLabel,
    analytics_header,
    label_line,
    pack_shard_batch,
    read_routed_label,
    route_line,
    routed_label_line,
    split_bundle_header,
    split_envelope,
    unpack_shard_batch,
)

if TYPE_CHECKING:
    from udfs.compiled_model import ModelTable

# Output bundles are UTF-8 bytes (see output_bundle).
DEAD_LETTERS = OutputTag("dead-letters", Types.PRIMITIVE_ARRAY(Types.BYTE()))
SNAPSHOTS = OutputTag("model-snapshots", Types.PRIMITIVE_ARRAY(Types.BYTE()))
LATE = OutputTag("late", Types.PRIMITIVE_ARRAY(Types.BYTE()))
LABEL_DEAD_LETTERS = OutputTag("label-dead-letters", Types.PRIMITIVE_ARRAY(Types.BYTE()))
# labels.mode stream or both: what LabelRouter.java learns of each transaction the job will score
# (udfs.labels.route_line), and the scoring operator's log of the labels it learned from.
ROUTES = OutputTag("routes", Types.PRIMITIVE_ARRAY(Types.BYTE()))
LEARNING = OutputTag("learning", Types.PRIMITIVE_ARRAY(Types.BYTE()))

OUTPUTS = ("scores", "dead-letters", "model-snapshots")
ANALYTICS_OUTPUTS = ("analytics", "late")
LABEL_OUTPUTS = ("learning", "label-dead-letters")

# Flink's watermark trails the one udfs/analytics.py defines by 1 ms (Flink's bounded
# out-of-orderness generator subtracts it), so a window due at `due` fires at Flink's `due - 1`.
FLINK_WATERMARK_LAG_MS = 1

# The end-of-input snapshots of a shard's models leave in bundles of at most this many lines.
FINAL_SNAPSHOTS_PER_BUNDLE = 1000

EMPTY_BATCH = RecordBatch.of([])

# The accumulator in which RecordBundler.java counts every record the source emits (its RECORDS_READ).
RECORDS_READ_ACCUMULATOR = "records-read"
# ... and the labels a label stream's bundler counts (RecordBundler.LABELS_READ).
LABELS_READ_ACCUMULATOR = "labels-read"

# How often a waiting client looks at the job and at Ctrl-C, in seconds.
POLL_SECONDS = 0.2
# How long to wait before asking again for a savepoint that failed, in seconds.
SAVEPOINT_RETRY_SECONDS = 1.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def flink_configuration(settings: Settings) -> Configuration:
    conf = Configuration()
    for key, value in flink_options(settings).items():
        conf.set_string(key, value)
    return conf


def output_bundle(lines: Sequence[bytes], keys: Sequence[str | None] | None = None) -> bytes:
    """Output lines (JSON, UTF-8) as one newline-separated bundle for the sinks: a file sink writes
    it whole (BundleEncoder.java). With `keys` (for a Kafka sink) each line becomes
    `<key>\t<line>`, which KeyedLineBytesSerializer.java splits into a message's key and value (a
    tab in a key would end it early, so it becomes a space; None is an empty key)."""
    if keys is None:
        return b"\n".join(lines)
    return b"\n".join(b"%s\t%s" % ((key or "").replace("\t", " ").encode("utf-8"), line)
                      for key, line in zip(keys, lines))


def keyed_lines_bundle(lines: Sequence[KeyedLine], keyed: bool) -> bytes:
    """`output_bundle` of JSON lines that carry their own keys (dead letters, snapshots)."""
    return output_bundle([line.encode("utf-8") for line in lines], [line.key for line in lines] if keyed else None)


class ReadBundle(ProcessFunction):
    """Decode, parse, clean and encode a bundle of records; emits (shard, that shard's records in
    arrival order as a packed RecordBatch) per shard, and the bundle's dead letters, as JSON
    lines, to DEAD_LETTERS."""

    def __init__(self, reader: TransactionReader, shards: int, keyed_output: bool, watermarked: bool,
                 routing: LabelRouting | None = None):
        self.reader = reader
        self.shards = shards
        self.keyed_output = keyed_output
        self.watermarked = watermarked  # records carry their split's watermark (SplitWatermarkTagger.java)
        self.routing = routing  # None: labels are inline only, nothing is logged or routed
        self.metrics = None
        self.records_read = None
        self.dead_lettered = {}
        self.worker = ""
        self.logs_made = 0

    def open(self, runtime_context: RuntimeContext):
        # Counters go up once per bundle, by the bundle's count: per record would cost the hot path.
        self.metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.records_read = self.metrics.counter("records_read")
        # A key-value group, so that Prometheus gets one metric with a `stage` label.
        self.dead_lettered = {stage: self.metrics.add_group("stage", stage).counter("dead_lettered")
                              for stage in DEAD_LETTER_STAGES}
        # Feature log ids are unique across workers and runs (see udfs.labels.log_id_of).
        self.worker = secrets.token_hex(6)
        self.logs_made = 0

    def process_element(self, bundle, ctx):
        stream, seq, records = split_bundle_header(bundle.decode("utf-8"))
        by_shard, dead_letters = self.reader.read_bundle_columns(records, self.shards, now_ms(), self.watermarked)
        self.records_read.inc(records_in_bundle(records))
        if dead_letters:  # keyed by txn_id, when known
            for stage, count in dead_letters_by_stage(dead_letters).items():
                if stage not in self.dead_lettered:  # a stage udfs/ added since
                    self.dead_lettered[stage] = self.metrics.add_group("stage", stage).counter("dead_lettered")
                self.dead_lettered[stage].inc(count)
            yield DEAD_LETTERS, keyed_lines_bundle(dead_letters, self.keyed_output)
        # A numbered bundle gives every shard a batch, even an empty one, so that each shard can
        # tell an empty batch from one still on its way (see udfs/ordering.py).
        shards = range(self.shards) if stream is not None else by_shard
        routes = []
        for shard in shards:
            batch = by_shard.get(shard)
            if batch is None or self.routing is None or not len(batch):
                yield shard, pack_shard_batch(stream, seq, batch if batch is not None else EMPTY_BATCH)
                continue
            log_id = log_id_of(int(batch.event_times.max()) + self.routing.ttl_ms, len(batch), self.worker,
                               self.logs_made)
            self.logs_made += 1
            routes += self.routing.routes(batch, shard, log_id)
            yield shard, pack_shard_batch(stream, seq, batch, log_id)
        if routes:
            yield ROUTES, b"\n".join(routes)


class LabelRouting(NamedTuple):
    """What the preparing operator tells LabelRouter.java of the transactions it sends to be scored."""

    ttl_ms: int  # labels.ttl_ms: how long a batch's features are logged after its latest event time
    learn_inline: bool  # labels.mode both: the inline label is learned from at scoring

    def routes(self, batch: RecordBatch, shard: int, log_id: str) -> list[bytes]:
        """One `udfs.labels.route_line` per record of `batch`, in order."""
        inline = batch.labels.tolist() if self.learn_inline else [-1] * len(batch)
        return [route_line(txn_id, shard, event_time, label, where(log_id, row))
                for row, (txn_id, event_time, label) in enumerate(zip(batch.txn_ids, batch.event_times.tolist(), inline))]


class ReadLabels(ProcessFunction):
    """Decodes, parses and cleans a bundle of labels (udfs.labels.read_label): emits the usable
    ones as one bundle of `label_line`s for LabelRouter.java, and dead letters (stages
    label-decode, label-parse, label-clean) to LABEL_DEAD_LETTERS."""

    def __init__(self, reader: TransactionReader, keyed_output: bool):
        self.reader = reader  # for its size cap and its dead letters (pseudonymized raw text)
        self.keyed_output = keyed_output
        self.labels_read = None
        self.dead_lettered = None

    def open(self, runtime_context: RuntimeContext):
        metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.labels_read = metrics.counter("labels_read")
        self.dead_lettered = metrics.counter("labels_unreadable")

    def process_element(self, bundle, ctx):
        lines, dead_letters = [], []
        now = now_ms()
        envelopes = bundle.decode("utf-8").split("\n")
        for envelope in envelopes:
            source, raw = split_envelope(envelope)
            try:
                lines.append(label_line(read_label(raw, self.reader.rules.max_record_bytes)))
            except Rejected as rejected:
                dead_letters.append(self.reader.dead_letter(raw, rejected, source, now))
        self.labels_read.inc(len(envelopes))
        if lines:
            yield b"\n".join(lines)
        if dead_letters:
            self.dead_lettered.inc(len(dead_letters))
            yield LABEL_DEAD_LETTERS, keyed_lines_bundle(dead_letters, self.keyed_output)


class ScoreShard(KeyedProcessFunction):
    """The models of one shard's keys, in keyed map state (model key -> model bytes). Each batch
    is scored in arrival order, in compiled code (ModelScorer.score_columns); snapshots go to
    SNAPSHOTS.

    Keyed state is the only record of a model; the worker also keeps each shard's models in
    memory, as a table of arrays, because reading state key by key costs a round trip to the JVM
    per record in process mode. That copy is loaded whole from state the first time the worker
    sees the shard (after a start or a restore) and written through on every update, so it always
    equals the state.
    """

    def __init__(self, scorer: ModelScorer, keyed_output: bool, analytics: Windowing | None,
                 learn_inline: bool = True):
        self.scorer = scorer
        self.keyed_output = keyed_output  # lines are "<model key>\t<json>" for a Kafka sink
        self.analytics = analytics  # None: windowed analytics off
        # False in labels.mode stream: a record's is_fraud is shown in its score, not learned from.
        self.learn_inline = learn_inline
        # Called after each batch is scored, with (shard, batch, assessed, feature log id, ctx);
        # yields more output (see ScoreShardWithLabelStream).
        self.after_scoring = None
        self.models = None
        self.shard_models: dict[int, ModelTable] = {}
        self.final_snapshots_timed: set[int] = set()  # shards whose END_OF_INPUT timer this worker set
        self.sequencer = BundleSequencer()
        self.scored = None
        self.late = None
        self.recent_loss: RecentLogLoss | None = None

    def open(self, runtime_context: RuntimeContext):
        internals.let_numba_import_in_python_workers()
        # Per batch, not per record (see ReadBundle.open). Gauges are integers in PyFlink, hence
        # the log loss in micro-units; `recent_labelled` says how many labelled records it is over
        # (0: no figure yet), so that a reader can weigh the subtasks' figures.
        metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.scored = metrics.counter("scored")
        # Late-record lines (a record late for windows of two sizes has two), as the late output holds.
        self.late = metrics.counter("late") if self.analytics is not None else None
        self.recent_loss = RecentLogLoss()
        metrics.gauge("model_keys", self._model_keys)
        metrics.gauge("recent_log_loss_micro", self.recent_loss.value_micro)
        metrics.gauge("recent_labelled", lambda: self.recent_loss.labelled)
        self.models = runtime_context.get_map_state(
            # Pickled bytes, as since version 1 of the model state, so that a savepoint of an
            # earlier release restores (its version-1 models are read, and written as version 2).
            # Not PRIMITIVE_ARRAY(BYTE): thread mode would convert its state values byte by byte.
            MapStateDescriptor("models", Types.STRING(), Types.PICKLED_BYTE_ARRAY()))
        self.shard_models = {}
        self.final_snapshots_timed = set()
        self.sequencer = BundleSequencer()

    def process_element(self, shard_batch, ctx):
        shard, packed = shard_batch
        stream, seq, batch, log_id = unpack_shard_batch(packed)
        batches = [(batch, log_id)] if stream is None else self.sequencer.release(shard, stream, seq, (batch, log_id))
        self.time_final_snapshots(shard, ctx)
        table = self._models_of(shard)
        for batch, log_id in batches:
            learned_from = batch if self.learn_inline else batch.without_labels()
            assessed = self.scorer.assess_columns(learned_from, table)
            keys = table.keys
            for row in assessed.changed_rows:  # not put_all: PyFlink 2.2's is broken in both modes
                self.models.put(keys[row], table.to_bytes(row))
            if len(batch):
                self.scored.inc(len(batch))
                self.recent_loss.add(assessed.probability, batch.labels)
                scores = output_bundle(self.scorer.score_lines(batch, assessed, now_ms()),
                                       batch.model_keys if self.keyed_output else None)
                if self.analytics is None:
                    yield scores
                else:
                    yield from self._with_analytics(batch, scores, ctx.timer_service().current_watermark())
            if assessed.snapshots:
                yield SNAPSHOTS, keyed_lines_bundle(assessed.snapshots, self.keyed_output)
            if self.after_scoring is not None:
                yield from self.after_scoring(shard, batch, assessed, log_id, ctx)

    def _with_analytics(self, batch: RecordBatch, scores: bytes, flink_watermark: int):
        """The batch's score lines after the header window-analytics reads (which records were late,
        by what watermark: udfs.analytics.analytics_header), and its late records (to LATE)."""
        analytics = self.analytics
        watermark = NO_WATERMARK if flink_watermark == JAVA_LONG_MIN else flink_watermark + FLINK_WATERMARK_LAG_MS
        watermarks, late_rows, late = late_records(analytics.specs, analytics.allowed_lateness_ms, batch, watermark)
        yield analytics_header(late_rows, watermarks) + scores
        self.late.inc(len(late))  # also when 0, so that the counter is reported from the first batch
        if late:
            yield LATE, output_bundle([line for _, line in late],
                                      [txn_id for txn_id, _ in late] if self.keyed_output else None)

    def time_final_snapshots(self, shard: int, ctx) -> None:
        """Sets the shard's END_OF_INPUT timer (its final snapshots), once per shard and worker
        (Flink keeps one timer per key and time, and restores it with the state). Called wherever a
        shard's models are used: labels can reach a shard before its first batch does."""
        if shard not in self.final_snapshots_timed:
            ctx.timer_service().register_event_time_timer(END_OF_INPUT)
            self.final_snapshots_timed.add(shard)

    def _model_keys(self) -> int:
        """Model keys in this worker's tables (the `model_keys` gauge): a shard's keys count from
        its first batch after a start or restore, when its table is loaded from state."""
        return sum(len(table) for table in self.shard_models.values())

    def _models_of(self, shard: int) -> ModelTable:
        table = self.shard_models.get(shard)
        if table is None:
            table = self.scorer.new_table()
            for key, data in self.models.items():
                table.add(key, data)
            self.shard_models[shard] = table
        return table

    def on_timer(self, timestamp, ctx):
        table = self._models_of(ctx.get_current_key())
        # In bundles of a bounded size: a shard of 100k keys would otherwise be one bundle of
        # hundreds of MB, held whole by the worker and again by the JVM.
        keys = table.keys
        for start in range(0, len(keys), FINAL_SNAPSHOTS_PER_BUNDLE):
            rows = range(start, min(start + FINAL_SNAPSHOTS_PER_BUNDLE, len(keys)))
            snapshots = [self.scorer.snapshot(table.key_model(row), keys[row]) for row in rows]
            yield SNAPSHOTS, keyed_lines_bundle(snapshots, self.keyed_output)


class LabelRules(NamedTuple):
    """What the scoring operator needs of labels.* to decide and explain a label's outcome (ms)."""

    ttl_ms: int
    unknown_wait_ms: int


class ScoreShardWithLabelStream(KeyedCoProcessFunction):
    """ScoreShard (input 1: shard batches) whose models also learn from labels that arrive later
    (input 2: LabelRouter.java's lines, bundled per shard by ShardBundler.java), in labels.mode
    stream or both.

    Each scored batch's features, as its models saw them, are logged in keyed map state (log id ->
    udfs.labels.FeatureLog bytes) until the watermark passes the batch's latest event time plus
    labels.ttl_ms. A routed label's outcome is decided by udfs.labels.routed_outcome; an applied
    label takes one SGD step on its record's logged features (ModelTable.learn_logged) and writes a
    learning line; the others are dead-lettered with their reason. A label whose log has not
    arrived yet (it can overtake its batch on the way) waits in keyed state for it.

    The worker keeps each shard's log ids (and the logs it has read) in memory, read from state the
    first time it sees the shard after a start or restore, as ScoreShard does with models.
    """

    def __init__(self, scoring: ScoreShard, rules: LabelRules, sgd: Sgd, snapshot_every: int):
        self.scoring = scoring
        self.rules = rules
        self.sgd = sgd
        self.snapshot_every = snapshot_every
        self.logs = None
        self.held = None
        self.shard_logs: dict[int, dict[str, FeatureLog | None]] = {}
        self.shard_held: dict[int, set[str]] = {}
        self.outcomes = {}

    def open(self, runtime_context: RuntimeContext):
        self.scoring.open(runtime_context)
        self.scoring.after_scoring = self._log_features
        # Pickled bytes, as the models (see ScoreShard.open).
        self.logs = runtime_context.get_map_state(MapStateDescriptor("feature-log", Types.STRING(),
                                                                     Types.PICKLED_BYTE_ARRAY()))
        self.held = runtime_context.get_map_state(MapStateDescriptor("labels-awaiting-log", Types.STRING(),
                                                                     Types.PICKLED_BYTE_ARRAY()))
        self.shard_logs, self.shard_held = {}, {}
        metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.outcomes = {outcome: metrics.add_group("outcome", outcome).counter("labels") for outcome in OUTCOMES}
        # Records whose features are logged (until their TTL passes), in this worker's shards.
        metrics.gauge("feature_log_records", self._logged_records)

    def process_element1(self, shard_batch, ctx):
        yield from self.scoring.process_element(shard_batch, ctx)

    def process_element2(self, shard_labels, ctx):
        shard, bundle = shard_labels
        yield from self._apply(shard, [read_routed_label(line) for line in bundle.split(b"\n") if line], ctx)

    def on_timer(self, timestamp, ctx):
        shard = ctx.get_current_key()
        logs = self._logs_of(shard)
        for log_id in [log_id for log_id in logs if expiry_of(log_id)[0] <= timestamp]:
            del logs[log_id]
            self.logs.remove(log_id)
        if timestamp == END_OF_INPUT:
            yield from self.scoring.on_timer(timestamp, ctx)

    def _log_features(self, shard: int, batch: RecordBatch, assessed, log_id: str | None, ctx):
        """Logs a scored batch's features, then applies the labels that were waiting for them."""
        if log_id is None:
            return
        log = FeatureLog(batch.model_keys, batch.event_times, assessed.probability, batch.indptr, batch.indices,
                         assessed.standardized)
        self.logs.put(log_id, log.to_bytes())
        self._logs_of(shard)[log_id] = log
        ctx.timer_service().register_event_time_timer(expiry_of(log_id)[0])
        held = self._held_of(shard)
        if log_id in held:
            held.discard(log_id)
            waiting = self.held.get(log_id)
            self.held.remove(log_id)
            yield from self._apply(shard, [read_routed_label(line) for line in waiting.split(b"\n")], ctx)

    def _apply(self, shard: int, routed_labels: list[RoutedLabel], ctx):
        self.scoring.time_final_snapshots(shard, ctx)
        table = self.scoring._models_of(shard)
        logs = self._logs_of(shard)
        watermark = ctx.timer_service().current_watermark()
        learned, letters, snapshots = [], [], []
        changed_rows = set()  # written to state once per bundle, not once per label
        now = now_ms()
        for routed in routed_labels:
            outcome, applied = routed_outcome(routed, self.rules.ttl_ms)
            log = None
            if outcome == APPLIED:
                log_id, row = log_position(routed.where)
                log = self._log(logs, log_id)
                outcome = label_disposition(outcome, log is not None, watermark, expiry_of(log_id)[0])
                if outcome == HOLD:
                    self._hold(shard, log_id, routed)  # its batch is still on its way
                    continue
            self.outcomes[outcome].inc()
            label = routed.label
            if outcome != APPLIED:
                reason = outcome_reason(outcome, label, routed.event_time, applied, self.rules.ttl_ms,
                                        self.rules.unknown_wait_ms)
                letters.append(KeyedLine(label_dead_letter(label, outcome, reason, now).decode("utf-8"), label.txn_id))
                continue
            model_key = log.model_keys[row]
            model_row = table.rows[model_key]
            indices, values = log.entries(row)
            stepped = table.learn_logged(model_row, indices, values, label.is_fraud, self.sgd, routed.event_time)
            changed_rows.add(model_row)
            updates = int(table.updates[model_row])
            learned.append(KeyedLine(learning_line(label.txn_id, model_key, label, routed.event_time, updates,
                                                   not stepped).decode("utf-8"), model_key))
            if stepped and updates % self.snapshot_every == 0:
                snapshots.append(self.scoring.scorer.snapshot(table.key_model(model_row), model_key))
        for row in changed_rows:
            self.scoring.models.put(table.keys[row], table.to_bytes(row))
        keyed = self.scoring.keyed_output
        if learned:
            yield LEARNING, keyed_lines_bundle(learned, keyed)
        if letters:
            yield LABEL_DEAD_LETTERS, keyed_lines_bundle(letters, keyed)
        if snapshots:
            yield SNAPSHOTS, keyed_lines_bundle(snapshots, keyed)

    def _hold(self, shard: int, log_id: str, routed: RoutedLabel) -> None:
        line = routed_label_line(routed)
        waiting = self.held.get(log_id)
        self.held.put(log_id, line if waiting is None else waiting + b"\n" + line)
        self._held_of(shard).add(log_id)

    def _log(self, logs: dict[str, FeatureLog | None], log_id: str) -> FeatureLog | None:
        """The log `log_id`, read from state the first time it is needed; None when there is none."""
        if log_id not in logs:
            return None
        log = logs[log_id]
        if log is None:
            log = logs[log_id] = FeatureLog.from_bytes(self.logs.get(log_id))
        return log

    def _logs_of(self, shard: int) -> dict[str, FeatureLog | None]:
        """The shard's log ids, each with its log once read (None until then)."""
        logs = self.shard_logs.get(shard)
        if logs is None:
            logs = self.shard_logs[shard] = dict.fromkeys(self.logs.keys())
        return logs

    def _held_of(self, shard: int) -> set[str]:
        held = self.shard_held.get(shard)
        if held is None:
            held = self.shard_held[shard] = set(self.held.keys())
        return held

    def _logged_records(self) -> int:
        return sum(expiry_of(log_id)[1] for logs in self.shard_logs.values() for log_id in logs)


def window_analytics(scored: DataStream, windows: Windowing, keyed_output: bool) -> DataStream:
    """The analytics lines of each window and group, emitted once when due (WindowAnalytics.java,
    one subtask: one key), from the scoring operator's output (score lines after a header: see
    udfs.analytics.analytics_header). In Java, on the score lines the job writes anyway: a Python
    window operator took about as much CPU as scoring (README, Benchmark)."""
    jvm = internals.jvm()
    specs = windows.specs
    function = jvm.riskstream.flink.WindowAnalytics(
        internals.java_longs([spec.size_ms for spec in specs]), internals.java_longs([spec.slide_ms for spec in specs]),
        internals.java_strings([spec.name for spec in specs]), internals.java_strings(windows.group_by),
        windows.allowed_lateness_ms, SCORE_CLIP, keyed_output, METRICS_GROUP)
    bytes_type = Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info()
    return java_operator(scored, "window-analytics", lambda j, jvm: j.keyBy(
        jvm.riskstream.flink.WindowAnalytics.oneKey()).process(function, bytes_type)).slot_sharing_group("scoring")


def without_analytics_header(scored: DataStream) -> DataStream:
    """The scoring operator's output bundles without the header for window-analytics (AnalyticsHeader.java)."""
    bytes_type = Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info()
    return java_operator(scored, "scores-without-analytics-header", lambda j, jvm: j.map(
        jvm.riskstream.flink.AnalyticsHeader(), bytes_type))


def window_analytics_late(windows: DataStream) -> DataStream:
    """The late lines the window-analytics operator writes (see WindowAnalytics.LATE)."""
    return internals.apply_java(windows, lambda j: j.getSideOutput(internals.jvm().riskstream.flink.WindowAnalytics.LATE))


def java_operator(stream: DataStream, name: str, build) -> DataStream:
    """Applies a Java operator from build/riskstream-flink.jar: `build(j_stream, jvm)` returns the
    new Java stream, named and with `name` as its stable uid."""
    return internals.apply_java(stream, lambda j_stream: build(j_stream, internals.jvm())).name(name).uid(name)


def bundled(stream: DataStream, settings: Settings) -> DataStream:
    """Records joined into newline-separated bundles, as UTF-8 bytes (see RecordBundler.java). With
    `performance.parallel_prepare` the bundles are numbered and spread over all parallel
    preparing workers; otherwise each stays with the worker of the source that read it."""
    bundling = settings.performance.bundling()
    sequenced = settings.performance.spreads_bundles()
    bytes_type = Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info()
    analytics = settings.analytics

    def bundler(jvm):
        bundler = jvm.riskstream.flink.RecordBundler(bundling.max_records, bundling.max_delay_ms, sequenced,
                                                     settings.source.max_records_per_second or 0)
        if uses_event_time(settings):  # a quiet source holds event time back no more (see RecordBundler.java)
            bundler.quietAfter(analytics.idleness_ms, analytics.out_of_orderness_ms)
        return bundler

    bundles = java_operator(stream, "bundle-records", lambda j, jvm: j.transform("bundle-records", bytes_type,
                                                                                 bundler(jvm)))
    return bundles.rebalance() if sequenced else bundles


def split_lines(stream: DataStream, name: str) -> DataStream:
    """Output bundles split into one record per line, for a Kafka sink (see SplitLineBytes.java)."""
    bytes_type = Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info()
    return java_operator(stream, name, lambda j, jvm: j.flatMap(jvm.riskstream.flink.SplitLineBytes(), bytes_type))


def transactions_source(env: StreamExecutionEnvironment, settings: Settings) -> DataStream:
    """Raw records tagged with where they came from: file and line (SourceTaggedLineFormat.java),
    or topic, partition and offset (TaggedKafkaDeserializer.java)."""
    return env.from_source(tagged_source(settings, settings.source, settings.kafka.transactions_topic),
                           watermarks(settings), "transactions-source").uid("transactions-source")


def tagged_source(settings: Settings, source: SourceSettings | LabelSourceSettings, topic: str) -> Source:
    """The source `source` describes, its records tagged with where they came from: a file set, a
    watched folder, or the Kafka topic `topic`."""
    if source.kind == "kafka":
        return kafka_source(settings, topic)
    line_format = BulkFormat(internals.jvm().riskstream.flink.SourceTaggedLineFormat())
    if source.kind == "files":
        return FileSource.for_bulk_file_format(line_format, *source.paths).build()
    return FileSource.for_bulk_file_format(line_format, source.directory).monitor_continuously(
        Duration.of_millis(source.discovery_interval_ms)).build()


def watermarks(settings: Settings) -> WatermarkStrategy:
    """Event-time watermarks per source split (EventTime.java) when analytics are on. Otherwise
    none: the model works in arrival order, and the final watermark of a bounded input still
    arrives to fire the end-of-input timers."""
    analytics = settings.analytics
    if not uses_event_time(settings):
        return WatermarkStrategy.no_watermarks()
    return WatermarkStrategy(internals.jvm().riskstream.flink.EventTime.watermarks(
        analytics.out_of_orderness_ms, analytics.idleness_ms))


def uses_event_time(settings: Settings) -> bool:
    """Whether transactions carry event-time watermarks: for windowed analytics, or to expire the
    feature log of a label stream."""
    return settings.analytics.enabled or settings.labels.streamed


def labels_source(env: StreamExecutionEnvironment, settings: Settings) -> DataStream:
    """Raw labels tagged with where they came from (as `transactions_source`), with per-split
    watermarks on their label_time (EventTime.java) and labels.idleness_ms."""
    labels = settings.labels
    strategy = WatermarkStrategy(internals.jvm().riskstream.flink.EventTime.watermarks(
        "label_time", labels.out_of_orderness_ms, labels.idleness_ms))
    return env.from_source(tagged_source(settings, labels.source, settings.kafka.labels_topic), strategy,
                           "labels-source").uid("labels-source")


def bundled_labels(stream: DataStream, settings: Settings) -> DataStream:
    """Labels joined into bundles as `bundled` joins transactions, counted in their own
    accumulator (RecordBundler.LABELS_READ); a quiet label stream holds event time back no more."""
    bundling, labels = settings.performance.bundling(), settings.labels
    bytes_type = Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info()
    return java_operator(stream, "bundle-labels", lambda j, jvm: j.transform(
        "bundle-labels", bytes_type, jvm.riskstream.flink.RecordBundler(
            bundling.max_records, bundling.max_delay_ms, False, 0, jvm.riskstream.flink.RecordBundler.LABELS_READ,
        ).quietAfter(labels.idleness_ms, labels.out_of_orderness_ms)))


def routed_labels(routes: DataStream, labels: DataStream, settings: Settings) -> tuple[DataStream, DataStream]:
    """Each label joined to its transaction's route by txn_id (LabelRouter.java), as (shard,
    bundle of LabelRouter's lines for that shard) (ShardBundler.java); and the dead letters of
    lines LabelRouter could not read (LabelRouter.UNREADABLE: a bug upstream)."""
    jvm = internals.jvm()
    rules = settings.labels
    router = jvm.riskstream.flink.LabelRouter(rules.remembered_ms(), rules.unknown_wait_ms,
                                              settings.performance.shards, METRICS_GROUP)
    key = jvm.riskstream.flink.LabelRouter.txnIdKey()
    string_type = Types.STRING().get_java_type_info()
    bytes_type = Types.PRIMITIVE_ARRAY(Types.BYTE()).get_java_type_info()
    routed = internals.apply_java_to_two(routes, labels, lambda j_routes, j_labels: j_routes.keyBy(key, string_type).connect(
        j_labels.keyBy(key, string_type)).process(router, bytes_type)).name("route-labels").uid("route-labels")
    bundling = settings.performance.bundling()
    shard_batch_type = Types.TUPLE([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())]).get_java_type_info()
    bundles = java_operator(routed, "bundle-routed-labels", lambda j, jvm: j.transform(
        "bundle-routed-labels", shard_batch_type, jvm.riskstream.flink.ShardBundler(
            bundling.max_records, bundling.max_delay_ms, rules.idleness_ms)))
    return bundles, internals.apply_java(routed, lambda j: j.getSideOutput(jvm.riskstream.flink.LabelRouter.UNREADABLE))


def split_watermark_tagged(stream: DataStream, settings: Settings) -> DataStream:
    """Records tagged with their split's watermark at arrival (see SplitWatermarkTagger.java)."""
    string_type = Types.STRING().get_java_type_info()
    return java_operator(stream, "tag-split-watermarks", lambda j, jvm: j.transform(
        "tag-split-watermarks", string_type, jvm.riskstream.flink.SplitWatermarkTagger(
            settings.analytics.out_of_orderness_ms)))


def kafka_source(settings: Settings, topic: str) -> Source:
    """The Kafka source of `topic`, with the profile's group, offsets and bounds."""
    kafka = settings.kafka
    jvm = internals.jvm()
    offsets = {
        "earliest": KafkaOffsetsInitializer.earliest,
        "latest": KafkaOffsetsInitializer.latest,
        "committed": lambda: KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST),
    }[kafka.starting_offsets]()
    builder = (
        jvm.org.apache.flink.connector.kafka.source.KafkaSource.builder()
        .setTopics(internals.java_strings([topic]))
        .setGroupId(kafka.consumer_group)
        .setStartingOffsets(internals.java_offsets(offsets))
        .setDeserializer(jvm.riskstream.flink.kafka.TaggedKafkaDeserializer())
    )
    properties = {**kafka.client_properties(), "isolation.level": "read_committed",
                  "max.partition.fetch.bytes": str(kafka.max_message_bytes)}
    if settings.performance.mode == "low_latency":
        # A fetch returns after at most 5 ms (not 500), with whatever arrived by then: one request
        # per 5 ms rather than one per record, which on a busy broker costs more than the wait.
        properties["fetch.max.wait.ms"] = "5"
        properties["fetch.min.bytes"] = str(kafka.max_message_bytes)
    for name, value in properties.items():
        builder.setProperty(name, value)
    if kafka.bounded:
        builder.setBounded(internals.java_offsets(KafkaOffsetsInitializer.latest()))
    return internals.source_of(builder.build())


def kafka_sink(settings: Settings, topic: str, name: str) -> Sink:
    """Lines `<key>\t<value>` to `topic` (see KeyedLineBytesSerializer.java), exactly once or at least once."""
    kafka = settings.kafka
    jvm = internals.jvm()
    producer = jvm.java.util.Properties()
    properties = {**kafka.client_properties(), "transaction.timeout.ms": str(kafka.transaction_timeout_ms),
                  "max.request.size": str(kafka.max_message_bytes)}
    for key, value in properties.items():
        producer.setProperty(key, value)
    guarantee = jvm.org.apache.flink.connector.base.DeliveryGuarantee
    builder = (
        jvm.org.apache.flink.connector.kafka.sink.KafkaSink.builder()
        .setBootstrapServers(kafka.bootstrap_servers)
        .setKafkaProducerConfig(producer)
        .setRecordSerializer(jvm.riskstream.flink.kafka.KeyedLineBytesSerializer(topic))
    )
    if kafka.delivery == "exactly-once":
        builder.setDeliveryGuarantee(guarantee.EXACTLY_ONCE).setTransactionalIdPrefix(
            f"{kafka.transactional_id_prefix}-{name}")
    else:
        builder.setDeliveryGuarantee(guarantee.AT_LEAST_ONCE)
    return internals.sink_of(builder.build())


def json_lines_sink(path: Path, name: str) -> FileSink:
    """Output bundles written whole to part files of JSON lines (see BundleEncoder.java)."""
    return (
        FileSink.for_row_format(str(path / name), Encoder(internals.jvm().riskstream.flink.BundleEncoder()))
        .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
        # A part file is committed at every checkpoint, so output becomes visible once per interval.
        .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
        .with_output_file_config(OutputFileConfig.builder().with_part_prefix(name).with_part_suffix(".jsonl").build())
        .build()
    )


def build_job(env: StreamExecutionEnvironment, settings: Settings) -> None:
    """Adds the scoring pipeline to `env`: transactions -> scores, dead letters, model snapshots,
    written as JSON lines under `settings.output.path`.

    Python is called once per bundle of records, not per record: the Java side bundles the raw
    lines, one Python call prepares a bundle and splits it by shard of model key, and one Python
    call per shard batch scores it with the models in keyed state.
    """
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    shard_batch_type = Types.TUPLE([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
    bundle_type = Types.PRIMITIVE_ARRAY(Types.BYTE())
    keyed_output = settings.output.kind == "kafka"
    analytics = settings.analytics
    source = transactions_source(env, settings)
    if analytics.enabled:
        source = split_watermark_tagged(source, settings)
    transactions = bundled(source, settings)
    windows_computed = windowing(settings) if analytics.enabled else None
    labels = settings.labels
    routing = LabelRouting(labels.ttl_ms, labels.mode == "both") if labels.streamed else None
    model_inputs = transactions.process(
        ReadBundle(reader, settings.performance.shards, keyed_output, analytics.enabled, routing),
        output_type=shard_batch_type
    ).name("decode-parse-clean-features").uid("decode-parse-clean-features")
    shard_batches = model_inputs.key_by(lambda shard_batch: shard_batch[0], key_type=Types.INT())
    scoring = ScoreShard(scorer, keyed_output, windows_computed, learn_inline=labels.mode != "stream")
    if labels.streamed:
        label_lines = bundled_labels(labels_source(env, settings), settings).process(
            ReadLabels(reader, keyed_output), output_type=bundle_type).name("read-labels").uid("read-labels")
        routed, unroutable = routed_labels(split_lines(model_inputs.get_side_output(ROUTES), "split-routes"),
                                           split_lines(label_lines, "split-labels"), settings)
        scored = shard_batches.connect(routed.key_by(lambda shard_labels: shard_labels[0], key_type=Types.INT())).process(
            ScoreShardWithLabelStream(scoring, LabelRules(labels.ttl_ms, labels.unknown_wait_ms), scorer.sgd,
                                      scorer.snapshot_every), output_type=bundle_type)
    else:
        scored = shard_batches.process(scoring, output_type=bundle_type)
    # Its own slots, so in process mode scoring gets Python workers apart from preparing.
    scored = scored.name("score-and-learn").uid("score-and-learn").slot_sharing_group("scoring")
    output = Path(settings.output.path)
    kafka = settings.kafka
    topics = (kafka.scores_topic, kafka.dead_letters_topic, kafka.snapshots_topic)
    scores = without_analytics_header(scored) if analytics.enabled else scored
    output_bundles = (scores, model_inputs.get_side_output(DEAD_LETTERS), scored.get_side_output(SNAPSHOTS))
    names = OUTPUTS
    if analytics.enabled:
        windows = window_analytics(scored, windows_computed, keyed_output)
        names += ANALYTICS_OUTPUTS
        topics += (kafka.analytics_topic, kafka.late_topic)
        output_bundles += (windows, scored.get_side_output(LATE).union(window_analytics_late(windows)))
    if labels.streamed:
        names += LABEL_OUTPUTS
        topics += (kafka.learning_topic, kafka.label_dead_letters_topic)
        output_bundles += (scored.get_side_output(LEARNING), label_lines.get_side_output(LABEL_DEAD_LETTERS).union(
            scored.get_side_output(LABEL_DEAD_LETTERS), unroutable))
    for name, topic, bundles in zip(names, topics, output_bundles):
        if keyed_output:
            split_lines(bundles, f"split-{name}").sink_to(kafka_sink(settings, topic, name)).name(
                f"{name}-sink").uid(f"{name}-sink")
        else:
            bundles.sink_to(json_lines_sink(output, name)).name(f"{name}-sink").uid(f"{name}-sink")


class JobRun(NamedTuple):
    """How a run of the job ended.

    wall_seconds: from the call to run_job to its return, start-up included.
    records_read: the records the source emitted into the job (RecordBundler's accumulator, counted
        apart from the outputs): all of them when the input ended, those before the savepoint when
        stopped; None when cancelled.
    ending: "finished" (the input ended); "stopped" (Ctrl-C: stopped with a savepoint, so every
        record read is in the committed outputs); "cancelled" (a second Ctrl-C: what was read since
        the last completed checkpoint is not in the committed outputs).
    savepoint: the savepoint's path when stopped, else None.
    """

    wall_seconds: float
    records_read: int | None
    ending: Literal["finished", "stopped", "cancelled"]
    savepoint: str | None = None
    labels_read: int | None = None  # as records_read, for a label stream (None without one)

    @property
    def interrupted(self) -> bool:
        return self.ending != "finished"


def run_job(settings: Settings) -> JobRun:
    """Builds and runs the job until its input ends (never, for a watched directory) or Ctrl-C.

    Ctrl-C (SIGINT) stops the job with a savepoint in `checkpointing.savepoint_directory`, so the
    sinks commit every record read before it; a second Ctrl-C cancels the job instead. Ctrl-C
    before the job is running raises KeyboardInterrupt, and whatever was being started ends with
    this process (PyFlink's gateway JVM exits when its Python process does). Call from the main
    thread, which gets SIGINT: elsewhere Ctrl-C is not handled here. A failed job raises, as before.
    Returns how the run ended (JobRun).
    """
    started = time.perf_counter()
    with CtrlCPresses() as ctrl_c:
        client = _start_unless_interrupted(settings, ctrl_c)
        result = client.get_job_execution_result()
        while not result.done() and not ctrl_c.count:
            time.sleep(POLL_SECONDS)
        if result.done():
            ending, savepoint = "finished", None
        else:
            ending, savepoint = _stop(client, result, settings.checkpointing.savepoint_directory, ctrl_c)
        counts = None if ending == "cancelled" else result.result()
    return JobRun(time.perf_counter() - started, _accumulated(counts, RECORDS_READ_ACCUMULATOR), ending, savepoint,
                  _accumulated(counts, LABELS_READ_ACCUMULATOR))


class CtrlCPresses:
    """Inside a `with` block, counts Ctrl-C presses (SIGINT) instead of raising KeyboardInterrupt.

    A KeyboardInterrupt raised inside a call into the JVM breaks py4j's connection mid-call and
    makes py4j log a traceback, so the job's client never lets one happen: it waits in Python and
    looks at `count`. Python handles signals in the main thread only, so elsewhere, or when SIGINT
    is ignored (a background job of a shell), this changes nothing.
    """

    def __init__(self) -> None:
        self.count = 0
        self._previous = None
        self._installed = False

    def __enter__(self) -> "CtrlCPresses":
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._pressed)
            self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)

    def _pressed(self, signum, frame) -> None:
        self.count += 1


def _start_unless_interrupted(settings: Settings, ctrl_c: CtrlCPresses) -> JobClient:
    """start_job, unless Ctrl-C comes first: then raises KeyboardInterrupt.

    PyFlink's gateway JVM is launched first, on this thread (about 2 s): once connected, it exits
    as soon as this process does (its watchdog calls into this process), whereas one left before
    that lingers for 10 s and prints to our stdout. Building and submitting the job then runs on a
    helper thread, watched from this one, so that a Ctrl-C ends the command at once.
    """
    internals.jvm()  # launches PyFlink's gateway JVM
    if ctrl_c.count:
        raise KeyboardInterrupt
    outcome: list = []  # the started job's client, or what start_job raised

    def start() -> None:
        try:
            outcome.append(start_job(settings))
        except BaseException as error:  # handed to the waiting thread, which raises it
            outcome.append(error)

    starter = threading.Thread(target=start, name="start-job", daemon=True)
    starter.start()
    while starter.is_alive() and not ctrl_c.count:
        starter.join(POLL_SECONDS)
    if not outcome:
        raise KeyboardInterrupt
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _stop(client: JobClient, result: CompletableFuture, savepoint_directory: str,
          ctrl_c: CtrlCPresses) -> tuple[Literal["finished", "stopped", "cancelled"], str | None]:
    """After a Ctrl-C: stops the job with a savepoint in `savepoint_directory`, or cancels it on a
    second Ctrl-C; `result` is the job's execution result. Returns ("stopped", the savepoint's
    path), ("cancelled", None), or ("finished", None) when the input ended before the savepoint."""
    _tell_user("stopping the job with a savepoint, so that every record read so far is committed; "
               "Ctrl-C again cancels it, and then what was read since the last checkpoint is not committed")
    savepoint_uri = Path(savepoint_directory).as_uri()
    stopping = internals.stop_with_savepoint(client, savepoint_uri)
    reasons_told = set()
    while not (result.done() and stopping.done()):
        if ctrl_c.count >= 2:
            _cancel(client, result, ctrl_c)
            return "cancelled", None
        failure = stopping.exception() if stopping.done() and not result.done() else None
        if failure is not None:  # the job runs on; mostly its tasks were still being deployed
            reason = _java_reason(failure)
            if reason not in reasons_told:
                reasons_told.add(reason)
                _tell_user(f"no savepoint yet ({reason}); trying again")
            time.sleep(SAVEPOINT_RETRY_SECONDS)
            stopping = internals.stop_with_savepoint(client, savepoint_uri)
        time.sleep(POLL_SECONDS)
    if stopping.exception() is not None:  # the input ended first
        return "finished", None
    return "stopped", stopping.result()


def _cancel(client: JobClient, result: CompletableFuture, ctrl_c: CtrlCPresses) -> None:
    """Cancels the job and waits until it has ended; a third Ctrl-C stops waiting (the job then
    ends with this process)."""
    _tell_user("cancelling the job")
    client.cancel()
    while not result.done() and ctrl_c.count < 3:
        time.sleep(POLL_SECONDS)


def _accumulated(result: JobExecutionResult | None, accumulator: str) -> int | None:
    count = None if result is None else result.get_accumulator_result(accumulator)
    return None if count is None else int(count)


def _java_reason(error: Exception) -> str:
    """The gist of a Java exception from py4j: its message's first line, without the exception
    class names (or Flink's "Failure reason" when it gives one)."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if "Failure reason: " in first_line:
        return first_line.rpartition("Failure reason: ")[2]
    return first_line.rpartition("Exception: ")[2]


def _tell_user(message: str) -> None:
    print(f"riskstream: {message}", file=sys.stderr, flush=True)


def start_job(settings: Settings, restore_from: str | None = None) -> JobClient:
    """Builds the job and starts it without waiting; the client can wait for it or cancel it.
    With `restore_from` (the path of a savepoint or retained checkpoint) the job resumes from it."""
    if settings.flink.python_execution_mode == "process":
        internals.run_python_workers_as_processes()
    compile_model_code()  # here, once, rather than in each Python worker as it starts
    configuration = flink_configuration(settings)
    if restore_from is not None:
        configuration.set_string("execution.state-recovery.path", restore_from)
    env = StreamExecutionEnvironment.get_execution_environment(configuration)
    build_job(env, settings)
    return env.execute_async(JOB_NAME)
