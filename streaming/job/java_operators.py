"""The project's Java operators (jvm/, built into build/riskstream-flink.jar), wired into the job:
bundling raw records, routing labels, splitting bundles into lines for Kafka, and the window
analytics. Each takes the settings it uses, not the whole profile."""

from __future__ import annotations

from pyflink.common import Types
from pyflink.datastream import DataStream, KeyedStream

from streaming.config.settings import Bundling, LabelSettings, WatermarkSettings
from streaming.job import pyflink_internals as internals
from streaming.job.identity import METRICS_GROUP
from udfs.analytics import Windowing
from udfs.metrics import SCORE_CLIP

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
SHARD_BATCH = Types.TUPLE([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
# A shard batch with its shard in front, Row(shard, (shard, bytes)): what a keyed stream of shard
# batches is made of (pyflink_internals.keyed_by_first_field).
KEYED_SHARD_BATCH = Types.ROW([Types.INT(), SHARD_BATCH])


def java_operator(stream: DataStream, name: str, build) -> DataStream:
    """Applies a Java operator from build/riskstream-flink.jar: `build(j_stream, jvm)` returns the
    new Java stream, named and with `name` as its stable uid."""
    return internals.apply_java(stream, lambda j_stream: build(j_stream, internals.jvm())).name(name).uid(name)


def keyed_by_shard(rows: DataStream) -> KeyedStream:
    """KEYED_SHARD_BATCH rows as shard batches keyed by their shard, keyed in Java: no Python
    operator in between (PyFlink's key_by would add one)."""
    return internals.keyed_by_first_field(rows, Types.INT(), SHARD_BATCH)


def by_shard(stream: DataStream) -> KeyedStream:
    """(shard, bytes) pairs from a Java operator (SHARD_BATCH), keyed by their shard: made rows
    (ShardKeyed.java) and keyed in Java."""
    rows = java_operator(stream, "key-by-shard", lambda j, jvm: j.map(
        jvm.riskstream.flink.ShardKeyed(), KEYED_SHARD_BATCH.get_java_type_info()))
    return keyed_by_shard(rows)


def bundled(stream: DataStream, bundling: Bundling, spread: bool, max_records_per_second: int | None,
            event_time: WatermarkSettings | None) -> DataStream:
    """Records joined into newline-separated bundles, as UTF-8 bytes (see RecordBundler.java). With
    `spread` (performance.parallel_prepare) the bundles are numbered and spread over all parallel
    preparing workers; otherwise each stays with the worker of the source that read it. With
    `event_time` (the transactions' watermarks), a quiet source holds event time back no more."""
    def bundler(jvm):
        bundler = jvm.riskstream.flink.RecordBundler(bundling.max_records, bundling.max_delay_ms, spread,
                                                     max_records_per_second or 0)
        if event_time is not None:
            bundler.quietAfter(event_time.idleness_ms, event_time.out_of_orderness_ms)
        return bundler

    bundles = java_operator(stream, "bundle-records", lambda j, jvm: j.transform(
        "bundle-records", BYTES.get_java_type_info(), bundler(jvm)))
    return bundles.rebalance() if spread else bundles


def bundled_labels(stream: DataStream, bundling: Bundling, event_time: WatermarkSettings) -> DataStream:
    """Labels joined into bundles as `bundled` joins transactions, counted in their own
    accumulator (RecordBundler.LABELS_READ); a quiet label stream holds event time back no more."""
    return java_operator(stream, "bundle-labels", lambda j, jvm: j.transform(
        "bundle-labels", BYTES.get_java_type_info(), jvm.riskstream.flink.RecordBundler(
            bundling.max_records, bundling.max_delay_ms, False, 0, jvm.riskstream.flink.RecordBundler.LABELS_READ,
        ).quietAfter(event_time.idleness_ms, event_time.out_of_orderness_ms)))


def routed_labels(routes: DataStream, labels: DataStream, rules: LabelSettings, shards: int, bundling: Bundling,
                  event_time: WatermarkSettings) -> tuple[DataStream, DataStream]:
    """Each label joined to its transaction's route by txn_id (LabelRouter.java), as (shard,
    bundle of LabelRouter's lines for that shard) (ShardBundler.java, which holds a quiet label
    stream's idle mark for `event_time.idleness_ms`); and the dead letters of lines LabelRouter
    could not read (LabelRouter.UNREADABLE: a bug upstream)."""
    jvm = internals.jvm()
    router = jvm.riskstream.flink.LabelRouter.operator(rules.remembered_ms(), rules.unknown_wait_ms, shards,
                                                      METRICS_GROUP)
    key = jvm.riskstream.flink.LabelRouter.txnIdKey()
    string_type = Types.STRING().get_java_type_info()
    routed = internals.apply_java_to_two(routes, labels, lambda j_routes, j_labels: j_routes.keyBy(key, string_type).connect(
        j_labels.keyBy(key, string_type)).transform("route-labels", BYTES.get_java_type_info(), router)
    ).name("route-labels").uid("route-labels")
    bundles = java_operator(routed, "bundle-routed-labels", lambda j, jvm: j.transform(
        "bundle-routed-labels", SHARD_BATCH.get_java_type_info(), jvm.riskstream.flink.ShardBundler(
            bundling.max_records, bundling.max_delay_ms, event_time.idleness_ms)))
    return bundles, internals.apply_java(routed, lambda j: j.getSideOutput(jvm.riskstream.flink.LabelRouter.UNREADABLE))


def split_watermark_tagged(stream: DataStream, out_of_orderness_ms: int, max_records_per_second: int | None
                           ) -> DataStream:
    """Records tagged with their split's watermark at arrival, keyed by split (see SplitWatermarkTagger.java).
    What RecordBundler does in the source's task when chained there (a ceiling of `max_records_per_second`,
    if any, and no watermark on an idle output) SourceHandoff.java does before the exchange: the bundler
    after it must then have no ceiling."""
    stream = java_operator(stream, "source-handoff", lambda j, jvm: j.transform(
        "source-handoff", BYTES.get_java_type_info(), jvm.riskstream.flink.SourceHandoff(max_records_per_second or 0)))
    return java_operator(stream, "tag-split-watermarks", lambda j, jvm: j.keyBy(
        jvm.riskstream.flink.SplitWatermarkTagger.bySplit()).transform(
        "tag-split-watermarks", Types.STRING().get_java_type_info(),
        jvm.riskstream.flink.SplitWatermarkTagger(out_of_orderness_ms)))


def split_lines(stream: DataStream, name: str) -> DataStream:
    """Output bundles split into one record per line, for a Kafka sink (see SplitLineBytes.java)."""
    return java_operator(stream, name, lambda j, jvm: j.flatMap(jvm.riskstream.flink.SplitLineBytes(),
                                                                BYTES.get_java_type_info()))


def window_analytics(scored: DataStream, windows: Windowing, keyed_output: bool) -> DataStream:
    """The analytics lines of each window and group, emitted once when due, from the scoring
    operator's output (score lines after a header: see udfs.wire.analytics_header): each batch split
    by group (GroupSplit.java, chained to the scoring operator), keyed by group into
    WindowAnalytics.java, so the windows' work spreads over every subtask and moves with its key
    groups on a rescale. In Java, on the score lines the job writes anyway: a Python window operator
    took about as much CPU as scoring (docs/benchmark.md). The records a savepoint of the single-key
    version held (uid window-analytics) join the groups through UnpartitionedAnalyticsState.java,
    whose input carries no records."""
    specs = windows.specs
    group_by = internals.java_strings(windows.group_by)
    function = internals.jvm().riskstream.flink.WindowAnalytics(
        internals.java_longs([spec.size_ms for spec in specs]), internals.java_longs([spec.slide_ms for spec in specs]),
        internals.java_strings([spec.name for spec in specs]), group_by,
        windows.allowed_lateness_ms, SCORE_CLIP, keyed_output, METRICS_GROUP)
    by_group = java_operator(scored, "split-by-group", lambda j, jvm: j.flatMap(
        jvm.riskstream.flink.GroupSplit(group_by, keyed_output), BYTES.get_java_type_info()))
    unpartitioned = java_operator(scored, "window-analytics-single-key-input", lambda j, jvm: j.filter(
        jvm.riskstream.flink.UnpartitionedAnalyticsState.noRecords()))
    restored = java_operator(unpartitioned, "window-analytics", lambda j, jvm: j.keyBy(
        jvm.riskstream.flink.UnpartitionedAnalyticsState.oneKey()).process(
        jvm.riskstream.flink.UnpartitionedAnalyticsState(group_by), BYTES.get_java_type_info()))
    return java_operator(by_group.union(restored), "window-analytics-by-group", lambda j, jvm: j.keyBy(
        jvm.riskstream.flink.GroupSplit.byGroup(), Types.STRING().get_java_type_info()).process(
        function, BYTES.get_java_type_info())
    ).slot_sharing_group("scoring")


def repeated_ids(seen_bundles: DataStream, horizon_ms: int, keyed_output: bool, buckets: int) -> DataStream:
    """The reports of txn_ids scored under two model keys within `horizon_ms` (RepeatedIds.java),
    from the scoring operator's bundles of seen lines (udfs.dedup.seen_line): split into `buckets`
    buckets of txn_ids, each bundle into one sub-bundle per bucket, keyed by bucket."""
    by_bucket = java_operator(seen_bundles, "split-seen-by-bucket", lambda j, jvm: j.flatMap(
        jvm.riskstream.flink.RepeatedIds.byBucket(buckets), SHARD_BATCH.get_java_type_info()))
    return java_operator(by_bucket, "repeated-ids", lambda j, jvm: j.keyBy(
        jvm.riskstream.flink.RepeatedIds.bucket(), Types.INT().get_java_type_info()).process(
        jvm.riskstream.flink.RepeatedIds(horizon_ms, keyed_output, METRICS_GROUP), BYTES.get_java_type_info()))


def without_analytics_header(scored: DataStream) -> DataStream:
    """The scoring operator's output bundles without the header for window-analytics (AnalyticsHeader.java)."""
    return java_operator(scored, "scores-without-analytics-header", lambda j, jvm: j.map(
        jvm.riskstream.flink.AnalyticsHeader(), BYTES.get_java_type_info()))


def window_analytics_late(windows: DataStream) -> DataStream:
    """The late lines the window-analytics operator writes (see WindowAnalytics.LATE)."""
    return internals.apply_java(windows, lambda j: j.getSideOutput(internals.jvm().riskstream.flink.WindowAnalytics.LATE))
