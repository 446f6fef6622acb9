package riskstream.flink;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.util.Collector;

/**
 * Splits each scored batch (the scoring operator's output with analytics on) into one sub-batch per
 * group field and group, so that {@link WindowAnalytics} runs keyed by group ({@link #byGroup}) and
 * its work spreads over every subtask: a record goes once to the key of each group field (with
 * {@code groupBy} merchant_category and country, to {@code merchant_category=grocery} and to
 * {@code country=DE}). The groups of one field come out in the order their first records have in
 * the batch, and each group's records keep the batch's order.
 *
 * <p>A sub-batch's bytes, little-endian: int32 key length, the key
 * ({@code <group field>=<group>}, UTF-8; also the Kafka message key of its window lines), then the
 * group's records as {@link ScoredColumns#toBytes} without group columns.
 */
public final class GroupSplit implements FlatMapFunction<byte[], byte[]> {
    private static final long serialVersionUID = 1L;
    private final String[] groupBy;
    private final boolean keyed;

    /**
     * @param groupBy the group fields, as the scored batch's lines name them
     * @param keyed whether each score line is after a {@code <key>\t} prefix (Kafka output)
     */
    public GroupSplit(String[] groupBy, boolean keyed) {
        this.groupBy = groupBy.clone();
        this.keyed = keyed;
    }

    @Override
    public void flatMap(byte[] batch, Collector<byte[]> out) throws Exception {
        split(ScoredColumns.ofScoredBatch(batch, groupBy, keyed), groupBy, out);
    }

    /** The sub-batches of {@code columns}, whose group columns are those of {@code groupBy}, in that order. */
    static void split(ScoredColumns columns, String[] groupBy, Collector<byte[]> out) {
        for (int field = 0; field < groupBy.length; field++) {
            Map<String, List<Integer>> rowsByGroup = new LinkedHashMap<>();
            for (int r = 0; r < columns.size(); r++) {
                rowsByGroup.computeIfAbsent(columns.groups[field][r], group -> new ArrayList<>()).add(r);
            }
            for (Map.Entry<String, List<Integer>> group : rowsByGroup.entrySet()) {
                int[] rows = group.getValue().stream().mapToInt(Integer::intValue).toArray();
                out.collect(subBatch(groupBy[field] + "=" + group.getKey(), columns.takeWithoutGroups(rows)));
            }
        }
    }

    static byte[] subBatch(String key, ScoredColumns records) {
        byte[] keyBytes = key.getBytes(StandardCharsets.UTF_8);
        byte[] columns = records.toBytes();
        return ByteBuffer.allocate(4 + keyBytes.length + columns.length).order(ByteOrder.LITTLE_ENDIAN)
                .putInt(keyBytes.length).put(keyBytes).put(columns).array();
    }

    /** The key of a sub-batch: {@code <group field>=<group>}. */
    static String keyOf(byte[] subBatch) {
        int length = ByteBuffer.wrap(subBatch).order(ByteOrder.LITTLE_ENDIAN).getInt();
        return new String(subBatch, 4, length, StandardCharsets.UTF_8);
    }

    /** The records of a sub-batch, as {@link ScoredColumns#toBytes} wrote them. */
    static byte[] recordsOf(byte[] subBatch) {
        int length = ByteBuffer.wrap(subBatch).order(ByteOrder.LITTLE_ENDIAN).getInt();
        return Arrays.copyOfRange(subBatch, 4 + length, subBatch.length);
    }

    /** The key {@link WindowAnalytics}' input is keyed by: the sub-batch's group. */
    public static KeySelector<byte[], String> byGroup() {
        return GroupSplit::keyOf;
    }
}
