"""The job's graph: `build_job(env, settings)` wires source -> prepare -> key by shard -> score and
learn -> outputs (scores, dead letters, model snapshots; analytics and late records; learning and
label dead letters), each output a sink of its own.

Python is called once per bundle of records, not per record: the Java side bundles the raw lines,
one Python call prepares a bundle and splits it by shard of model key, and one Python call per
shard batch scores it with the models in keyed state. Every decision about a record is made by
udfs/; the operators here only hand records to it and route what comes back.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pyflink.common import Configuration
from pyflink.datastream import DataStream, StreamExecutionEnvironment

from streaming.config import KafkaSettings, Settings
from streaming.config.flink_options import flink_options
from streaming.config.from_settings import global_part, global_rounds, model_scorer, transaction_reader, windowing
from streaming.config.global_settings import VERSIONS_OUTPUT
from streaming.job import pyflink_internals as internals
from streaming.job.bundles import (
    DEAD_LETTERS,
    DRIFT,
    LABEL_DEAD_LETTERS,
    LATE,
    LEARNING,
    ROUTES,
    SEEN_TXN_IDS,
    SNAPSHOTS,
)
from streaming.job.connectors import json_lines_sink, kafka_sink, labels_source, transactions_source
from streaming.job.dedup import ShardDedup
from streaming.job.drift import shard_drift
from streaming.job.global_versions import (
    ScoreShardWithLabelStreamAndVersions,
    ScoreShardWithVersions,
    aggregated,
    versions_by_shard,
)
from streaming.job.java_operators import (
    BYTES,
    KEYED_SHARD_BATCH,
    bundled,
    bundled_labels,
    by_shard,
    keyed_by_shard,
    repeated_ids,
    routed_labels,
    split_lines,
    split_watermark_tagged,
    window_analytics,
    window_analytics_late,
    without_analytics_header,
)
from streaming.job.prepare import LabelRouting, ReadBundle, ReadLabels
from streaming.job.scoring import LabelRules, ScoreShard, ScoreShardWithLabelStream, ShardScoring
from udfs.reading import DEAD_LETTER_VERSION


class Output(NamedTuple):
    """One of the job's outputs: its name (the folder under output.path, the sink's uid prefix and
    its transactional id suffix), its Kafka topic, and the stream of output bundles it writes."""

    name: str
    topic: str
    bundles: DataStream
    # The sink's parallelism when it must not be the job's: the global model's versions keep one order.
    parallelism: int | None = None


def flink_configuration(settings: Settings) -> Configuration:
    conf = Configuration()
    for key, value in flink_options(settings).items():
        conf.set_string(key, value)
    return conf


def build_job(env: StreamExecutionEnvironment, settings: Settings) -> None:
    """Adds the scoring pipeline to `env`: transactions -> the outputs of `outputs`, written as JSON
    lines under `settings.output.path` or to the kafka.*_topic topics."""
    for output in outputs(env, settings):
        add_sink(output, settings.output.kind == "kafka", Path(settings.output.path), settings.kafka)


def outputs(env: StreamExecutionEnvironment, settings: Settings) -> list[Output]:
    """The job's graph up to its sinks: one Output per output the settings turn on."""
    reader = transaction_reader(settings)
    scorer = model_scorer(settings, reader.encoder)
    keyed_output = settings.output.kind == "kafka"
    analytics, labels, performance, kafka = settings.analytics, settings.labels, settings.performance, settings.kafka
    bundling = performance.bundling()
    low_latency = performance.mode == "low_latency"
    transactions_time = settings.event_time.transactions if settings.transactions_in_event_time else None

    source = transactions_source(env, settings.source, kafka, transactions_time, low_latency)
    max_records_per_second = settings.source.max_records_per_second
    if analytics.enabled:  # the ceiling goes before the tagger's exchange, chained to the source
        source = split_watermark_tagged(source, settings.event_time.transactions.out_of_orderness_ms,
                                        max_records_per_second)
        max_records_per_second = None
    transactions = bundled(source, bundling, performance.spreads_bundles(), max_records_per_second, transactions_time)
    routing = LabelRouting(labels.ttl_ms, labels.mode == "both") if labels.streamed else None
    model_inputs = transactions.process(
        ReadBundle(reader, performance.shards, keyed_output, analytics.enabled, routing), output_type=KEYED_SHARD_BATCH
    ).name("decode-parse-clean-features").uid("decode-parse-clean-features")
    # Rows with their shard in front, keyed in Java: PyFlink's key_by would add a Python operator
    # (a third hop of every record into Python) that its chaining cannot fuse with this one.
    shard_batches = keyed_by_shard(model_inputs)
    windows_computed = windowing(settings) if analytics.enabled else None
    drift = shard_drift(settings, scorer)
    dedup = ShardDedup(settings.dedup.horizon_ms, DEAD_LETTER_VERSION) if settings.dedup.enabled else None
    scoring = ShardScoring(scorer, keyed_output, windows_computed, learn_inline=labels.mode != "stream", drift=drift,
                           dedup=dedup)
    if labels.streamed:
        label_lines = bundled_labels(
            labels_source(env, labels.source, kafka, settings.event_time.labels, low_latency), bundling,
            settings.event_time.labels,
        ).process(ReadLabels(reader, keyed_output), output_type=BYTES).name("read-labels").uid("read-labels")
        routed, unroutable = routed_labels(
            split_lines(internals.side_output(model_inputs, ROUTES), "split-routes"), split_lines(label_lines, "split-labels"),
            labels, performance.shards, bundling, settings.event_time.labels)
        rules = LabelRules(labels.ttl_ms, labels.unknown_wait_ms)
        if settings.model.uses_global:  # the versions share the second input (global_versions.py)
            scored = shard_batches.connect(by_shard(routed.union(versions_by_shard(env, settings)))
                                           ).process(ScoreShardWithLabelStreamAndVersions(
                                               scoring, rules, scorer.snapshot_every,
                                               global_part(settings, scorer), learn_inline=labels.mode != "stream"),
                                               output_type=BYTES)
        else:
            scored = shard_batches.connect(by_shard(routed)).process(
                ScoreShardWithLabelStream(scoring, rules, scorer.snapshot_every), output_type=BYTES)
    elif settings.model.uses_global:
        scored = shard_batches.connect(by_shard(versions_by_shard(env, settings))).process(
            ScoreShardWithVersions(scoring, global_part(settings, scorer), learn_inline=True), output_type=BYTES)
    else:
        scored = shard_batches.process(ScoreShard(scoring), output_type=BYTES)
    # Its own slots, so in process mode scoring gets Python workers apart from preparing.
    scored = scored.name("score-and-learn").uid("score-and-learn").slot_sharing_group("scoring")

    found = [Output("scores", kafka.scores_topic, without_analytics_header(scored) if analytics.enabled else scored),
             Output("dead-letters", kafka.dead_letters_topic, internals.side_output(model_inputs, DEAD_LETTERS).union(
                 internals.side_output(scored, DEAD_LETTERS))),
             Output("model-snapshots", kafka.snapshots_topic, internals.side_output(scored, SNAPSHOTS))]
    if analytics.enabled:
        windows = window_analytics(scored, windows_computed, keyed_output)
        found += [Output("analytics", kafka.analytics_topic, windows),
                  Output("late", kafka.late_topic, internals.side_output(scored, LATE).union(window_analytics_late(windows)))]
    if dedup is not None:
        found.append(Output("repeated-ids", kafka.repeated_ids_topic, repeated_ids(
            internals.side_output(scored, SEEN_TXN_IDS), settings.dedup.horizon_ms, keyed_output,
            settings.flink.max_parallelism)))
    if drift is not None:
        found.append(Output("drift", kafka.drift_topic, internals.side_output(scored, DRIFT)))
    if settings.model.uses_global:
        found.append(Output(VERSIONS_OUTPUT, kafka.model_versions_topic,
                            aggregated(env, scored, global_rounds(settings, scorer), keyed_output), parallelism=1))
    if labels.streamed:
        found += [Output("learning", kafka.learning_topic, internals.side_output(scored, LEARNING)),
                  Output("label-dead-letters", kafka.label_dead_letters_topic,
                         internals.side_output(label_lines, LABEL_DEAD_LETTERS).union(
                             internals.side_output(scored, LABEL_DEAD_LETTERS), unroutable))]
    return found


def add_sink(output: Output, keyed_output: bool, folder: Path, kafka: KafkaSettings) -> None:
    """Writes `output` to its Kafka topic, one message per line (`keyed_output`), or to part files
    of JSON lines under `folder/<name>`; the sink's uid is `<name>-sink`."""
    name = output.name
    if keyed_output:
        lines = split_lines(output.bundles, f"split-{name}")
        if output.parallelism is not None:
            lines = lines.set_parallelism(output.parallelism)
        sink = lines.sink_to(kafka_sink(kafka, output.topic, name)).name(f"{name}-sink").uid(f"{name}-sink")
    else:
        sink = output.bundles.sink_to(json_lines_sink(folder, name)).name(f"{name}-sink").uid(f"{name}-sink")
    if output.parallelism is not None:
        sink.set_parallelism(output.parallelism)
