"""The scoring operators (uid score-and-learn): each shard batch is scored in arrival order, then
learned from, with the shard's models (ShardModels); with a label stream, labels that arrive later
are learned from too. Every decision about a record or a label is made in udfs/."""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import numpy as np
from pyflink.common import Types
from pyflink.datastream import KeyedCoProcessFunction, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from streaming.job import pyflink_internals as internals
from streaming.job.bundles import (
    DEAD_LETTERS,
    DRIFT,
    LABEL_DEAD_LETTERS,
    LATE,
    LEARNING,
    SEEN_TXN_IDS,
    SNAPSHOTS,
    now_ms,
)
from streaming.job.dedup import ShardDedup
from streaming.job.drift import ShardDrift
from streaming.job.identity import METRICS_GROUP
from streaming.job.shard_models import ShardModels
from udfs.analytics import Windowing, late_records
from udfs.feature_log import FeatureLog, expiry_of, is_dropped_row, log_position, with_dropped_rows
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
from udfs.label_outcomes import (
    LATE as LATE_LABEL,
)
from udfs.live_metrics import RecentLogLoss
from udfs.ordering import BundleSequencer
from udfs.records import KeyedLine
from udfs.scoring import ModelScorer
from udfs.wire import (
    END_OF_INPUT,
    JAVA_LONG_MIN,
    NO_WATERMARK,
    RecordBatch,
    RoutedLabel,
    analytics_header,
    keyed_lines_bundle,
    output_bundle,
    read_routed_label,
    routed_label_line,
    unpack_shard_batch,
)

# Flink's watermark trails the one udfs/analytics.py defines by 1 ms (Flink's bounded
# out-of-orderness generator subtracts it), so a window due at `due` fires at Flink's `due - 1`.
FLINK_WATERMARK_LAG_MS = 1

# Called after a batch is scored, with (shard, batch, assessed, feature log id or None, ctx, dropped:
# None, or the Dropped redeliveries of the shard batch); yields more output.
AfterScoring = Callable[..., Iterator]


class Dropped(NamedTuple):
    """A shard batch some of whose records were redeliveries (udfs/dedup.py), not scored."""

    kept: np.ndarray  # positions in the shard batch of the records scored
    batch: RecordBatch  # the shard batch as it came, all its records


class ShardScoring:
    """What both scoring operators do with a shard batch: put the numbered bundles of a shard back
    in order (udfs.ordering), score each batch in compiled code (ModelScorer.assess_columns) and
    learn from its inline labels (unless labels.mode is stream), write the changed models through,
    and emit the score lines (after the header window-analytics reads, when analytics are on), late
    records and snapshots; with drift detection (`drift`), the batch's drift events. Not a Flink
    function itself: the operators own one and call it."""

    def __init__(self, scorer: ModelScorer, keyed_output: bool, analytics: Windowing | None, learn_inline: bool,
                 drift: ShardDrift | None = None, dedup: ShardDedup | None = None):
        self.scorer = scorer
        self.keyed_output = keyed_output  # lines are "<model key>\t<json>" for a Kafka sink
        self.analytics = analytics  # None: windowed analytics off
        # False in labels.mode stream: a record's is_fraud is shown in its score, not learned from.
        self.learn_inline = learn_inline
        self.models = ShardModels(scorer)
        self.drift = drift  # None: model.drift.detector none
        self.dedup = dedup  # None: dedup.horizon_ms 0
        self.sequencer = BundleSequencer()
        self.scored = None
        self.late = None
        self.recent_loss: RecentLogLoss | None = None
        # Set by the global model's operator: (shard, batch, assessed) -> (assessed with the blended
        # scores, the score lines' extra JSON fields, e.g. b',"global_version":3').
        self.blend: Callable[..., tuple] | None = None
        # Set by the global model's operator: shard -> the GlobalModel version the shard holds, which
        # the key models read the batch with (ModelScorer.assess_columns) and a rewarm starts from.
        self.held: Callable[[int], object] | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        internals.let_numba_import_in_python_workers()
        # Per batch, not per record (see ReadBundle.open). Gauges are integers in PyFlink, hence
        # the log loss in micro-units; `recent_labelled` says how many labelled records it is over
        # (0: no figure yet), so that a reader can weigh the subtasks' figures.
        metrics = runtime_context.get_metrics_group().add_group(METRICS_GROUP)
        self.scored = metrics.counter("scored")
        # Late-record lines (a record late for windows of two sizes has two), as the late output holds.
        self.late = metrics.counter("late") if self.analytics is not None else None
        self.recent_loss = RecentLogLoss()
        metrics.gauge("model_keys", self.models.key_count)
        metrics.gauge("recent_log_loss_micro", self.recent_loss.value_micro)
        metrics.gauge("recent_labelled", lambda: self.recent_loss.labelled)
        self.models.open(runtime_context)
        if self.drift is not None:
            self.drift.open(runtime_context)
        if self.dedup is not None:
            self.dedup.open(runtime_context)
        self.sequencer = BundleSequencer()

    def score(self, shard_batch: tuple[int, bytes], ctx, after_scoring: AfterScoring | None = None) -> Iterator:
        shard, packed = shard_batch
        stream, seq, batch, log_id = unpack_shard_batch(packed)
        batches = [(batch, log_id)] if stream is None else self.sequencer.release(shard, stream, seq, (batch, log_id))
        self.models.time_final_snapshots(shard, ctx)
        table = self.models.table(shard)
        for batch, log_id in batches:
            dropped = None
            if self.dedup is not None:  # before scoring: a redelivery is neither scored nor learned from
                shard_batch_rows = batch
                batch, kept, letters = self.dedup.drop_redeliveries(shard, batch,
                                                                    ctx.timer_service().current_watermark(), now_ms())
                if letters:
                    dropped = Dropped(kept, shard_batch_rows)
                    yield DEAD_LETTERS, keyed_lines_bundle(letters, self.keyed_output)
            learned_from = batch if self.learn_inline else batch.without_labels()
            held = None if self.held is None else self.held(shard)  # fixed for the whole batch
            assessed = self.scorer.assess_columns(learned_from, table, held)
            drift_events = None
            if self.drift is not None:  # before the models are written: a reset changes them
                drift_events = self._track_drift(shard, learned_from, assessed, table, held)
            self.models.write_through(table, assessed.changed_rows)
            fields = b""
            if self.blend is not None:  # the global model's part (streaming/job/global_versions.py)
                assessed, fields = self.blend(shard, batch, assessed)
            if len(batch):
                self.scored.inc(len(batch))
                self.recent_loss.add(assessed.probability, batch.labels)
                lines = self.scorer.score_lines(batch, assessed, now_ms())
                if fields:  # more fields, spliced in before each line's closing brace
                    lines = [line[:-1] + fields + b"}" for line in lines]
                scores = output_bundle(lines, batch.model_keys if self.keyed_output else None)
                if self.analytics is None:
                    yield scores
                else:
                    yield from self._with_analytics(batch, scores, ctx.timer_service().current_watermark())
            if assessed.snapshots:
                yield SNAPSHOTS, keyed_lines_bundle(assessed.snapshots, self.keyed_output)
            if drift_events:
                yield DRIFT, keyed_lines_bundle(drift_events, self.keyed_output)
            if self.dedup is not None:  # before after_scoring: a label waiting for this log may need it
                seen = self.dedup.remember(shard, batch, log_id, None if dropped is None else dropped.kept, ctx)
                if seen:
                    yield SEEN_TXN_IDS, seen
            if after_scoring is not None:
                yield from after_scoring(shard, batch, assessed, log_id, ctx, dropped)

    def _track_drift(self, shard: int, batch: RecordBatch, assessed, table, held) -> list:
        """The batch's drift events (udfs.drift_tracking); its detectors are written to state."""
        detectors = self.drift.detectors(shard)
        events = self.drift.tracker.after_batch(detectors, batch, assessed, table, now_ms(), held)
        self.drift.write_through(detectors)
        return events

    def _with_analytics(self, batch: RecordBatch, scores: bytes, flink_watermark: int) -> Iterator:
        """The batch's score lines after the header window-analytics reads (which records were late,
        by what watermark: udfs.wire.analytics_header), and its late records (to LATE)."""
        analytics = self.analytics
        watermark = NO_WATERMARK if flink_watermark == JAVA_LONG_MIN else flink_watermark + FLINK_WATERMARK_LAG_MS
        watermarks, late_rows, late = late_records(analytics.specs, analytics.allowed_lateness_ms, batch, watermark)
        yield analytics_header(late_rows, watermarks) + scores
        self.late.inc(len(late))  # also when 0, so that the counter is reported from the first batch
        if late:
            yield LATE, output_bundle([line for _, line in late],
                                      [txn_id for txn_id, _ in late] if self.keyed_output else None)

    def expire(self, shard: int, timestamp: int) -> None:
        """At an event-time timer (ms): forgets the shard's txn_ids remembered long enough."""
        if self.dedup is not None:
            self.dedup.expire(shard, timestamp)

    def final_snapshots(self, shard: int) -> Iterator:
        for bundle in self.models.final_snapshots(shard, self.keyed_output):
            yield SNAPSHOTS, bundle


class ScoreShard(KeyedProcessFunction):
    """Scores and learns from each shard batch (ShardScoring); at the end of a bounded input, emits
    a final snapshot of every model of the shard (to SNAPSHOTS)."""

    def __init__(self, scoring: ShardScoring):
        self.scoring = scoring

    def open(self, runtime_context: RuntimeContext):
        self.scoring.open(runtime_context)

    def process_element(self, shard_batch, ctx):
        yield from self.scoring.score(shard_batch, ctx)

    def on_timer(self, timestamp, ctx):
        shard = ctx.get_current_key()
        self.scoring.expire(shard, timestamp)
        if timestamp == END_OF_INPUT:
            yield from self.scoring.final_snapshots(shard)


class LabelRules(NamedTuple):
    """What the scoring operator needs of labels.* to decide and explain a label's outcome (ms)."""

    ttl_ms: int
    unknown_wait_ms: int


class ScoreShardWithLabelStream(KeyedCoProcessFunction):
    """ScoreShard (input 1: shard batches) whose models also learn from labels that arrive later
    (input 2: LabelRouter.java's lines, bundled per shard by ShardBundler.java), in labels.mode
    stream or both.

    Each scored batch's features, as its models saw them, are logged in keyed map state (log id ->
    udfs.feature_log.FeatureLog bytes) until the watermark passes the batch's latest event time plus
    labels.ttl_ms. A routed label's outcome is decided by udfs.label_outcomes (routed_outcome, label_disposition); an applied
    label takes one optimizer step (model.optimizer) on its record's logged features and writes a
    learning line (a bundle's applied labels in one compiled call, in their order:
    ModelScorer.learn_logged_columns; one at a time, ModelTable.learn_logged, where drift
    detection or a subclass's hooks follow each step); the others are dead-lettered with their
    reason. A label whose log has not arrived yet (it can overtake its batch on the way) waits in
    keyed state for it.

    The worker keeps each shard's log ids (and the logs it has read) in memory, read from state the
    first time it sees the shard after a start or restore, as ShardModels does with models.
    """

    def __init__(self, scoring: ShardScoring, rules: LabelRules, snapshot_every: int):
        self.scoring = scoring
        self.rules = rules
        self.snapshot_every = snapshot_every
        self.logs = None
        self.held = None
        self.shard_logs: dict[int, dict[str, FeatureLog | None]] = {}
        self.shard_held: dict[int, set[str]] = {}
        self.outcomes = {}

    def open(self, runtime_context: RuntimeContext):
        self.scoring.open(runtime_context)
        # Pickled bytes, as the models (see ShardModels.open).
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
        yield from self.scoring.score(shard_batch, ctx, self._log_features)

    def process_element2(self, shard_labels, ctx):
        shard, bundle = shard_labels
        yield from self._apply(shard, [read_routed_label(line) for line in bundle.split(b"\n") if line], ctx)

    def on_timer(self, timestamp, ctx):
        shard = ctx.get_current_key()
        self.scoring.expire(shard, timestamp)
        logs = self._logs_of(shard)
        for log_id in [log_id for log_id in logs if expiry_of(log_id)[0] <= timestamp]:
            del logs[log_id]
            self.logs.remove(log_id)
        if timestamp == END_OF_INPUT:
            yield from self.scoring.final_snapshots(shard)

    def _log_features(self, shard: int, batch: RecordBatch, assessed, log_id: str | None, ctx,
                      dropped: Dropped | None = None):
        """Logs a scored batch's features (with an empty row for each redelivery dropped from it,
        so that rows stay where the routes say), then applies the labels that were waiting for them."""
        if log_id is None:
            return
        log = FeatureLog(batch.model_keys, batch.event_times, assessed.probability, batch.indptr, batch.indices,
                         assessed.standardized)
        if dropped is not None:
            log = with_dropped_rows(log, dropped.kept, len(dropped.batch), dropped.batch.model_keys)
        logged = log.to_bytes()
        self.logs.put(log_id, logged)
        # Kept as read back from its bytes: a label then steps on the same float32 values before
        # and after a restore, and the worker holds the compact form.
        self._logs_of(shard)[log_id] = FeatureLog.from_bytes(logged)
        ctx.timer_service().register_event_time_timer(expiry_of(log_id)[0])
        held = self._held_of(shard)
        if log_id in held:
            held.discard(log_id)
            waiting = self.held.get(log_id)
            self.held.remove(log_id)
            yield from self._apply(shard, [read_routed_label(line) for line in waiting.split(b"\n")], ctx)

    def _apply(self, shard: int, routed_labels: list[RoutedLabel], ctx):
        models = self.scoring.models
        models.time_final_snapshots(shard, ctx)
        table = models.table(shard)
        logs = self._logs_of(shard)
        watermark = ctx.timer_service().current_watermark()
        applied, letters = [], []
        now = now_ms()
        # Each label's outcome first: none depends on the models, so the applied ones can then
        # learn in their order in one go.
        for routed in routed_labels:
            outcome, previous = routed_outcome(routed, self.rules.ttl_ms)
            log = None
            if outcome == APPLIED:
                log_id, row = log_position(routed.where)
                log = self._log(logs, log_id)
                if log is not None and is_dropped_row(log, row):
                    # Its route was a redelivery's (it reached LabelRouter first): the features to
                    # learn from are the scored first delivery's, logged before it was remembered.
                    first = self.scoring.dedup.seen(shard).first_where(log.model_keys[row], routed.label.txn_id)
                    log_id, row = log_position(first) if first else (log_id, row)
                    log = self._log(logs, log_id) if first else None
                outcome = label_disposition(outcome, log is not None, watermark, expiry_of(log_id)[0])
                if outcome == HOLD and log_id in logs:  # its log is here: what it needs is gone
                    outcome = LATE_LABEL
                if outcome == HOLD:
                    self._hold(shard, log_id, routed)  # its batch is still on its way
                    continue
            self.outcomes[outcome].inc()
            label = routed.label
            if outcome == APPLIED:
                applied.append((routed, log, log_id, row))
                continue
            reason = outcome_reason(outcome, label, routed.event_time, previous, self.rules.ttl_ms,
                                    self.rules.unknown_wait_ms)
            letters.append(KeyedLine(label_dead_letter(label, outcome, reason, now).decode("utf-8"), label.txn_id))
        drift = self.scoring.drift
        if not applied:
            learned, snapshots, drift_events = [], [], []
        elif drift is None and self._learns_in_columns:
            (learned, snapshots), drift_events = self._learn_columns(table, applied), []
        else:
            learned, snapshots, drift_events = self._learn_one_by_one(shard, table, applied, now)
        if drift is not None:
            drift.write_through(drift.detectors(shard))
        keyed = self.scoring.keyed_output
        if learned:
            yield LEARNING, keyed_lines_bundle(learned, keyed)
        if letters:
            yield LABEL_DEAD_LETTERS, keyed_lines_bundle(letters, keyed)
        if snapshots:
            yield SNAPSHOTS, keyed_lines_bundle(snapshots, keyed)
        if drift_events:
            yield DRIFT, keyed_lines_bundle(drift_events, keyed)

    # Whether applied labels may learn in one compiled call (ModelScorer.learn_logged_columns): not
    # when a subclass's hooks (_global_margin, _learned) must see each label's step.
    _learns_in_columns = True

    def _learn_columns(self, table, applied: list) -> tuple[list[KeyedLine], list[KeyedLine]]:
        """The applied labels' steps in one compiled call, in their order: (their learning lines,
        the snapshots taken on the way)."""
        model_keys, updates_before, stepped, snapshots = self.scoring.scorer.learn_logged_columns(
            table, [(log, row) for _, log, _, row in applied], [routed.label.is_fraud for routed, *_ in applied],
            [routed.event_time for routed, *_ in applied])
        self.scoring.models.write_through(table, {table.rows[key] for key in model_keys})
        return [KeyedLine(learning_line(routed.label.txn_id, key, routed.label, routed.event_time,
                                        before + step, not step).decode("utf-8"), key)
                for (routed, *_), key, before, step in zip(applied, model_keys, updates_before.tolist(),
                                                            stepped.tolist())], snapshots

    def _learn_one_by_one(self, shard: int, table, applied: list, now: int
                          ) -> tuple[list[KeyedLine], list[KeyedLine], list[bytes]]:
        """The applied labels' steps one at a time, in their order (ModelTable.learn_logged), for
        the hooks and the drift detectors that follow each: (learning lines, snapshots, drift events)."""
        learned, snapshots, drift_events = [], [], []
        drift = self.scoring.drift
        detectors = None if drift is None else drift.detectors(shard)
        changed_rows = set()  # written to state once per bundle, not once per label
        for routed, log, log_id, row in applied:
            label = routed.label
            model_key = log.model_keys[row]
            model_row = table.rows[model_key]
            indices, values = log.entries(row)
            updates_before = int(table.updates[model_row])
            # model.blend sum: the label's step is on sigmoid(global margin + key margin), both now.
            offset = self._global_margin(shard, log, log_id, row)
            key_margin = 0.0 if offset is None else table.margin(model_row, indices, values)
            stepped = table.learn_logged(model_row, indices, values, label.is_fraud, routed.event_time, offset)
            self._learned(shard, log, log_id, row, label.is_fraud, key_margin)
            changed_rows.add(model_row)
            updates = int(table.updates[model_row])
            learned.append(KeyedLine(learning_line(label.txn_id, model_key, label, routed.event_time, updates,
                                                   not stepped).decode("utf-8"), model_key))
            if stepped and updates % self.snapshot_every == 0:
                snapshots.append(self.scoring.scorer.snapshot(table.key_model(model_row), model_key))
            if detectors is not None:  # the loss of the score the record was given (its log's)
                event = drift.tracker.after_label(detectors, table, model_row, label.txn_id, int(log.event_times[row]),
                                                  float(log.scores[row]), label.is_fraud, updates_before, now,
                                                  None if self.scoring.held is None else self.scoring.held(shard))
                if event is not None:
                    drift_events.append(event)
        self.scoring.models.write_through(table, changed_rows)
        return learned, snapshots, drift_events

    def _global_margin(self, shard: int, log: FeatureLog, log_id: str, row: int) -> float | None:
        """The global margin a label's step adds to the key's (a hook: model.blend sum,
        streaming/job/global_versions.py); None: the key's margin alone."""
        return None

    def _learned(self, shard: int, log: FeatureLog, log_id: str, row: int, is_fraud: int, key_margin: float) -> None:
        """Called for each applied label, after the key's model learned from it (a hook: the
        global model learns from it too, with `key_margin`, the key's margin the step used, as
        offset under blend sum: streaming/job/global_versions.py)."""

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
