"""The job's sources and sinks: files (a fixed set or a watched folder), Kafka topics, and
exactly-once JSON-lines part files; event-time watermarks per source split."""

from __future__ import annotations

from pathlib import Path

from pyflink.common import Duration, Encoder, WatermarkStrategy
from pyflink.datastream import DataStream, StreamExecutionEnvironment
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

from streaming.config import KafkaSettings, LabelSourceSettings, SourceSettings
from streaming.config.settings import WatermarkSettings
from streaming.job import pyflink_internals as internals


def transactions_source(env: StreamExecutionEnvironment, source: SourceSettings, kafka: KafkaSettings,
                        event_time: WatermarkSettings | None, low_latency: bool) -> DataStream:
    """Raw records tagged with where they came from: file and line (SourceTaggedLineFormat.java),
    or topic, partition and offset (TaggedKafkaDeserializer.java). With `event_time`, per-split
    watermarks on their event_time (EventTime.java); without, none: the model works in arrival
    order, and the final watermark of a bounded input still arrives to fire the end-of-input timers."""
    if event_time is None:
        strategy = WatermarkStrategy.no_watermarks()
    else:
        strategy = WatermarkStrategy(internals.jvm().riskstream.flink.EventTime.watermarks(
            event_time.out_of_orderness_ms, event_time.idleness_ms))
    return env.from_source(tagged_source(source, kafka, kafka.transactions_topic, low_latency), strategy,
                           "transactions-source").uid("transactions-source")


def labels_source(env: StreamExecutionEnvironment, source: LabelSourceSettings, kafka: KafkaSettings,
                  event_time: WatermarkSettings, low_latency: bool) -> DataStream:
    """Raw labels tagged with where they came from (as `transactions_source`), with per-split
    watermarks on their label_time (EventTime.java)."""
    strategy = WatermarkStrategy(internals.jvm().riskstream.flink.EventTime.watermarks(
        "label_time", event_time.out_of_orderness_ms, event_time.idleness_ms))
    return env.from_source(tagged_source(source, kafka, kafka.labels_topic, low_latency), strategy,
                           "labels-source").uid("labels-source")


def tagged_source(source: SourceSettings | LabelSourceSettings, kafka: KafkaSettings, topic: str,
                  low_latency: bool) -> Source:
    """The source `source` describes, its records tagged with where they came from: a file set, a
    watched folder, or the Kafka topic `topic`."""
    if source.kind == "kafka":
        return kafka_source(kafka, topic, low_latency)
    line_format = BulkFormat(internals.jvm().riskstream.flink.SourceTaggedLineFormat())
    if source.kind == "files":
        return FileSource.for_bulk_file_format(line_format, *source.paths).build()
    return FileSource.for_bulk_file_format(line_format, source.directory).monitor_continuously(
        Duration.of_millis(source.discovery_interval_ms)).build()


def kafka_source(kafka: KafkaSettings, topic: str, low_latency: bool) -> Source:
    """The Kafka source of `topic`, with the profile's group, offsets and bounds, reading committed
    records only; `low_latency` (performance.mode) fetches every 5 ms."""
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
    if low_latency:
        # A fetch returns after at most 5 ms (not 500), with whatever arrived by then: one request
        # per 5 ms rather than one per record, which on a busy broker costs more than the wait.
        properties["fetch.max.wait.ms"] = "5"
        properties["fetch.min.bytes"] = str(kafka.max_message_bytes)
    for name, value in properties.items():
        builder.setProperty(name, value)
    if kafka.bounded:
        builder.setBounded(internals.java_offsets(KafkaOffsetsInitializer.latest()))
    return internals.source_of(builder.build())


def model_versions_source(kafka: KafkaSettings) -> Source:
    """The global model's versions for a run whose outputs go to Kafka (kafka.model_versions_topic),
    read committed, each value as bytes;
    the source ends after a version marked final (UntilFinalVersionSource.java), so a bounded run
    ends. From the topic's end when the job starts (a restore resumes from its checkpoint's
    offsets), not the profile's offsets: a run reads only the versions its own aggregator published
    after it started, never an earlier run's (whose numbers would clash with its own)."""
    jvm = internals.jvm()
    builder = (
        jvm.org.apache.flink.connector.kafka.source.KafkaSource.builder()
        .setTopics(internals.java_strings([kafka.model_versions_topic]))
        .setGroupId(f"{kafka.consumer_group}-model-versions")
        .setStartingOffsets(internals.java_offsets(KafkaOffsetsInitializer.latest()))
        .setDeserializer(jvm.riskstream.flink.kafka.VersionValues())
    )
    properties = {**kafka.client_properties(), "isolation.level": "read_committed",
                  "max.partition.fetch.bytes": str(kafka.max_message_bytes),
                  # A version is waited for by every shard: fetch it as soon as it is committed.
                  "fetch.max.wait.ms": "20",
                  # A topic created after the job started is found within 2 s, not Kafka's 5 minutes.
                  "partition.discovery.interval.ms": "2000"}
    for name, value in properties.items():
        builder.setProperty(name, value)
    return internals.source_of(jvm.riskstream.flink.UntilFinalVersionSource(builder.build()))


# How often the file route's versions source looks for new part files, in milliseconds: a version
# waits for the checkpoint that commits it, then at most this long (VersionFiles.java).
VERSIONS_DISCOVERY_MS = 50


def model_versions_file_source(folder: Path) -> Source:
    """The global model's versions for a run whose outputs are files: the committed part files of
    `folder` (the model-versions output, `json_lines_sink`), one version message per line, watched
    every VERSIONS_DISCOVERY_MS; ends after the version marked final (VersionFiles.java). The
    folder must hold no earlier run's versions (`streaming.job.global_versions.versions_folder`)."""
    return internals.source_of(internals.jvm().riskstream.flink.VersionFiles.source(
        str(folder), VERSIONS_DISCOVERY_MS))


def kafka_sink(kafka: KafkaSettings, topic: str, name: str) -> Sink:
    """Lines `<key>\t<value>` to `topic` (see KeyedLineBytesSerializer.java), exactly once or at
    least once (kafka.delivery); `name` makes the output's transactional id prefix its own."""
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
    """Output bundles written whole to part files of JSON lines under `path/name` (see BundleEncoder.java)."""
    return (
        FileSink.for_row_format(str(path / name), Encoder(internals.jvm().riskstream.flink.BundleEncoder()))
        .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
        # A part file is committed at every checkpoint, so output becomes visible once per interval.
        .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
        .with_output_file_config(OutputFileConfig.builder().with_part_prefix(name).with_part_suffix(".jsonl").build())
        .build()
    )
