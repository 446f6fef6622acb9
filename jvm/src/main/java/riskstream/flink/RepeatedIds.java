package riskstream.flink;

import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.metrics.Counter;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * Reports a txn_id scored under two model keys within the de-duplication horizon (docs/dedup.md).
 *
 * <p>The scoring operator drops a redelivery (the same txn_id under the same model key, which
 * reaches the same shard) before scoring it; a txn_id under another model key may be on another
 * shard, so nothing before scoring can see both without an exchange in front of it. This operator,
 * keyed by txn_id after scoring, sees every scored record once (its "seen" line: txn_id, model key,
 * event time in epoch ms, source tag, tab-separated UTF-8; udfs.dedup.seen_line) and writes a JSON
 * line for each later record of a txn_id whose model key differs from the first's: schema_version,
 * txn_id, first and repeat (each model_key, event_time, source), reported_at. Both records were
 * scored; the report is what an operator acts on.
 *
 * <p>Key its input with {@link LabelRouter#txnIdKey()} (the bytes before the first tab).
 *
 * <p>State: the first record's line per txn_id, cleared by an event-time timer at its event time
 * plus the horizon, as the scoring operator forgets it. Counter {@code repeated_txn_ids}.
 */
public final class RepeatedIds extends KeyedProcessFunction<String, byte[], byte[]> {
    private static final long serialVersionUID = 1L;
    private static final ObjectMapper JSON = new ObjectMapper();

    private final long horizonMs;
    private final boolean keyed;
    private final String metricsGroup;
    private transient ValueState<byte[]> first;
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
        this.keyed = keyed;
        this.metricsGroup = metricsGroup;
    }

    @Override
    public void open(OpenContext openContext) {
        first = getRuntimeContext().getState(new ValueStateDescriptor<>(
                "first-scored", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        repeated = getRuntimeContext().getMetricGroup().addGroup(metricsGroup).counter("repeated_txn_ids");
    }

    @Override
    public void processElement(byte[] line, Context ctx, Collector<byte[]> out) throws Exception {
        byte[] earlier = first.value();
        String[] fields = fields(line);
        if (earlier == null) {
            first.update(line);
            ctx.timerService().registerEventTimeTimer(plus(Long.parseLong(fields[2]), horizonMs));
            return;
        }
        String[] firstFields = fields(earlier);
        if (firstFields[1].equals(fields[1])) {
            return; // the same key: a record the scoring operator no longer remembered (past the horizon)
        }
        repeated.inc();
        Map<String, Object> report = new LinkedHashMap<>();
        report.put("schema_version", 1);
        report.put("txn_id", fields[0]);
        report.put("first", delivery(firstFields));
        report.put("repeat", delivery(fields));
        report.put("reported_at", System.currentTimeMillis());
        byte[] json = JSON.writeValueAsBytes(report);
        if (!keyed) {
            out.collect(json);
            return;
        }
        byte[] key = fields[0].getBytes(StandardCharsets.UTF_8);
        byte[] keyedLine = new byte[key.length + 1 + json.length];
        System.arraycopy(key, 0, keyedLine, 0, key.length);
        keyedLine[key.length] = '\t';
        System.arraycopy(json, 0, keyedLine, key.length + 1, json.length);
        out.collect(keyedLine);
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<byte[]> out) {
        first.clear();
    }

    private static String[] fields(byte[] line) {
        return new String(line, StandardCharsets.UTF_8).split("\t", 4);
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
        String[] parts = tag.split(":", 4);
        if (tag.startsWith("file:") && parts.length >= 3) {
            String[] fileParts = tag.split(":", 3);
            source.put("file", fileParts[2]);
            source.put("line", Long.parseLong(fileParts[1]));
        } else if (tag.startsWith("kafka:") && parts.length == 4) {
            source.put("topic", parts[3]);
            source.put("partition", Integer.parseInt(parts[1]));
            source.put("offset", Long.parseLong(parts[2]));
        }
        return source;
    }

    private static long plus(long time, long duration) {
        long sum = time + duration;
        return sum < time ? Long.MAX_VALUE : sum;
    }
}
