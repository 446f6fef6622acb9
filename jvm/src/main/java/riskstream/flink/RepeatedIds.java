package riskstream.flink;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.metrics.Counter;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * Reports a txn_id scored under two model keys within the de-duplication horizon (docs/dedup.md).
 *
 * <p>The scoring operator drops a redelivery (the same txn_id under the same model key, which
 * reaches the same shard) before scoring it; a txn_id under another model key may be on another
 * shard, so nothing before scoring can see both without an exchange in front of it. This operator
 * sees every scored record once after scoring: its "seen" line (txn_id, model key, event time in
 * epoch ms, source tag, tab-separated UTF-8; udfs.dedup.seen_line), and writes a JSON line for each
 * later record of a txn_id whose model key differs from the first's: schema_version, txn_id, first
 * and repeat (each model_key, event_time, source), reported_at. Both records were scored; the report
 * is what an operator acts on.
 *
 * <p>Its input is the scoring operator's bundles of seen lines, split by {@link #byBucket} into one
 * sub-bundle per bucket of txn_ids (a hash of the txn_id), keyed by bucket: a record costs a map
 * state lookup, not a stream element and a timer of its own (measured: a per-record keyed element
 * and event-time timer added 20 core-µs a record). State per bucket: txn_id -> the first record's
 * line; every {@code horizonMs / 8} of event time a timer removes the lines whose event time plus
 * the horizon the watermark has passed, and a lookup treats such a line as gone already, so what is
 * reported does not depend on when the timer ran. Counter {@code repeated_txn_ids}.
 */
public final class RepeatedIds extends KeyedProcessFunction<Integer, Tuple2<Integer, byte[]>, byte[]> {
    private static final long serialVersionUID = 1L;
    private static final ObjectMapper JSON = new ObjectMapper();
    // Timers per horizon: a remembered line is removed at most horizon / SWEEPS after it expired.
    private static final int SWEEPS = 8;

    private final long horizonMs;
    private final long sweepMs;
    private final boolean keyed;
    private final String metricsGroup;
    private transient MapState<String, byte[]> firstScored;
    private transient Counter repeated;

    /**
     * @param horizonMs dedup.horizon_ms: how long after its event time a txn_id is remembered (> 0)
     * @param keyed whether output lines start with a message key and a tab (Kafka output: the txn_id)
     * @param metricsGroup the metric group of the counter
     */
    public RepeatedIds(long horizonMs, boolean keyed, String metricsGroup) {
        if (horizonMs <= 0) {
            throw new IllegalArgumentException("horizonMs must be > 0");
        }
        this.horizonMs = horizonMs;
        this.sweepMs = Math.max(1, horizonMs / SWEEPS);
        this.keyed = keyed;
        this.metricsGroup = metricsGroup;
    }

    /** Splits a bundle of seen lines into one (bucket, sub-bundle) per bucket of its txn_ids. */
    public static FlatMapFunction<byte[], Tuple2<Integer, byte[]>> byBucket(int buckets) {
        return new ByBucket(buckets);
    }

    /** The key of {@link #byBucket}'s output: its bucket. */
    public static KeySelector<Tuple2<Integer, byte[]>, Integer> bucket() {
        return new Bucket();
    }

    private static final class ByBucket implements FlatMapFunction<byte[], Tuple2<Integer, byte[]>> {
        private static final long serialVersionUID = 1L;
        private final int buckets;

        ByBucket(int buckets) {
            if (buckets < 1) {
                throw new IllegalArgumentException("buckets must be >= 1");
            }
            this.buckets = buckets;
        }

        @Override
        public void flatMap(byte[] bundle, Collector<Tuple2<Integer, byte[]>> out) {
            Map<Integer, ByteArrayOutputStream> byBucket = new HashMap<>();
            int start = 0;
            while (start < bundle.length) {
                int end = start;
                int tab = -1;
                while (end < bundle.length && bundle[end] != '\n') {
                    if (tab < 0 && bundle[end] == '\t') {
                        tab = end;
                    }
                    end++;
                }
                if (end > start) {
                    int bucket = Math.floorMod(hash(bundle, start, tab < 0 ? end : tab), buckets);
                    ByteArrayOutputStream lines = byBucket.computeIfAbsent(bucket, b -> new ByteArrayOutputStream());
                    if (lines.size() > 0) {
                        lines.write('\n');
                    }
                    lines.write(bundle, start, end - start);
                }
                start = end + 1;
            }
            byBucket.forEach((bucket, lines) -> out.collect(Tuple2.of(bucket, lines.toByteArray())));
        }

        /** FNV-1a over the txn_id's bytes: the same bucket in every JVM and run. */
        private static int hash(byte[] bytes, int from, int to) {
            int hash = 0x811c9dc5;
            for (int i = from; i < to; i++) {
                hash = (hash ^ (bytes[i] & 0xff)) * 0x01000193;
            }
            return hash;
        }
    }

    private static final class Bucket implements KeySelector<Tuple2<Integer, byte[]>, Integer> {
        private static final long serialVersionUID = 1L;

        @Override
        public Integer getKey(Tuple2<Integer, byte[]> subBundle) {
            return subBundle.f0;
        }
    }

    @Override
    public void open(OpenContext openContext) {
        firstScored = getRuntimeContext().getMapState(new MapStateDescriptor<>(
                "first-scored", BasicTypeInfo.STRING_TYPE_INFO, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        repeated = getRuntimeContext().getMetricGroup().addGroup(metricsGroup).counter("repeated_txn_ids");
    }

    @Override
    public void processElement(Tuple2<Integer, byte[]> subBundle, Context ctx, Collector<byte[]> out) throws Exception {
        long watermark = ctx.timerService().currentWatermark();
        for (String line : new String(subBundle.f1, StandardCharsets.UTF_8).split("\n")) {
            String[] fields = line.split("\t", 4);
            byte[] earlier = firstScored.get(fields[0]);
            String[] firstFields = earlier == null ? null : new String(earlier, StandardCharsets.UTF_8).split("\t", 4);
            if (firstFields == null || expired(Long.parseLong(firstFields[2]), watermark)) {
                long eventTime = Long.parseLong(fields[2]);
                firstScored.put(fields[0], line.getBytes(StandardCharsets.UTF_8));
                ctx.timerService().registerEventTimeTimer(sweepAfter(plus(eventTime, horizonMs)));
            } else if (!firstFields[1].equals(fields[1])) {
                repeated.inc();
                out.collect(report(firstFields, fields));
            } // the same model key: a record the scoring operator no longer remembered; nothing to report
        }
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<byte[]> out) throws Exception {
        List<String> gone = new ArrayList<>();
        for (Map.Entry<String, byte[]> entry : firstScored.entries()) {
            String line = new String(entry.getValue(), StandardCharsets.UTF_8);
            if (expired(Long.parseLong(line.split("\t", 4)[2]), timestamp)) {
                gone.add(entry.getKey());
            }
        }
        for (String txnId : gone) {
            firstScored.remove(txnId);
        }
    }

    /** Whether a line of `eventTime` is past the horizon at `watermark` (both epoch ms). */
    private boolean expired(long eventTime, long watermark) {
        return plus(eventTime, horizonMs) <= watermark;
    }

    /** The sweep time at or after `time`: a multiple of the sweep interval, so a bucket has few timers. */
    private long sweepAfter(long time) {
        long sweeps = time / sweepMs + (time % sweepMs == 0 ? 0 : 1);
        return sweeps > Long.MAX_VALUE / sweepMs ? Long.MAX_VALUE : sweeps * sweepMs;
    }

    private byte[] report(String[] firstFields, String[] fields) throws Exception {
        Map<String, Object> report = new LinkedHashMap<>();
        report.put("schema_version", 1);
        report.put("txn_id", fields[0]);
        report.put("first", delivery(firstFields));
        report.put("repeat", delivery(fields));
        report.put("reported_at", System.currentTimeMillis());
        byte[] json = JSON.writeValueAsBytes(report);
        if (!keyed) {
            return json;
        }
        byte[] key = fields[0].getBytes(StandardCharsets.UTF_8);
        byte[] keyedLine = new byte[key.length + 1 + json.length];
        System.arraycopy(key, 0, keyedLine, 0, key.length);
        keyedLine[key.length] = '\t';
        System.arraycopy(json, 0, keyedLine, key.length + 1, json.length);
        return keyedLine;
    }

    /** A record's model key, event time and source coordinates, as the report shows them. */
    private static Map<String, Object> delivery(String[] fields) {
        Map<String, Object> delivery = new LinkedHashMap<>();
        delivery.put("model_key", fields[1]);
        delivery.put("event_time", Long.parseLong(fields[2]));
        delivery.put("source", source(fields.length > 3 ? fields[3] : ""));
        return delivery;
    }

    /** A source tag as the dead letters' source object: {file, line} or {topic, partition, offset}. */
    static Map<String, Object> source(String tag) {
        Map<String, Object> source = new LinkedHashMap<>();
        if (tag.startsWith("file:")) {
            String[] parts = tag.split(":", 3);
            if (parts.length == 3) {
                source.put("file", unescaped(parts[2]));
                source.put("line", Long.parseLong(parts[1]));
            }
        } else if (tag.startsWith("kafka:")) {
            String[] parts = tag.split(":", 4);
            if (parts.length == 4) {
                source.put("topic", parts[3]);
                source.put("partition", Integer.parseInt(parts[1]));
                source.put("offset", Long.parseLong(parts[2]));
            }
        }
        return source;
    }

    /** A path as the file source's tag escapes it (SourceTaggedLineFormat.java): \\, \t, \n. */
    private static String unescaped(String path) {
        if (path.indexOf('\\') < 0) {
            return path;
        }
        StringBuilder text = new StringBuilder(path.length());
        for (int i = 0; i < path.length(); i++) {
            char c = path.charAt(i);
            if (c == '\\' && i + 1 < path.length()) {
                char next = path.charAt(++i);
                text.append(next == 't' ? '\t' : next == 'n' ? '\n' : next);
            } else {
                text.append(c);
            }
        }
        return text.toString();
    }

    private static long plus(long time, long duration) {
        long sum = time + duration;
        return sum < time ? Long.MAX_VALUE : sum;
    }
}
