package riskstream.flink;

import org.apache.flink.api.common.functions.FilterFunction;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * The state of the window-analytics operator as it was before {@link WindowAnalytics} was
 * partitioned by group (version 1, uid {@code window-analytics}: every window of every group on one
 * key, {@link #oneKey}), restored from a savepoint of that version and handed on: when its timer
 * fires (the watermark reached the earliest window its records were waiting for), it sends every
 * record it held to {@link WindowAnalytics}, split by group as {@link GroupSplit} splits a scored
 * batch, and clears its state. The records come before the watermark that made the timer fire, so
 * they wait in their groups for the same windows they waited for here; each record's watermark is
 * raised to the one version 1 had emitted windows through, so it counts in no window that version
 * had emitted, as there.
 *
 * <p>Its input carries no records ({@link #noRecords}, chained to the scoring operator), only
 * watermarks and checkpoint barriers: a job that never ran version 1 has nothing here, and the
 * operator costs next to nothing.
 */
public final class UnpartitionedAnalyticsState extends KeyedProcessFunction<Integer, byte[], byte[]> {
    private static final long serialVersionUID = 1L;
    private final String[] groupBy;
    private transient ListState<byte[]> pendingState;
    private transient ValueState<Long> emittedThroughState;

    /** @param groupBy the group fields of version 1's records, in the order of their group columns */
    public UnpartitionedAnalyticsState(String[] groupBy) {
        this.groupBy = groupBy.clone();
    }

    /** Version 1's key: every record on key 0. */
    public static KeySelector<byte[], Integer> oneKey() {
        return new OneKey();
    }

    private static final class OneKey implements KeySelector<byte[], Integer> {
        private static final long serialVersionUID = 1L;

        @Override
        public Integer getKey(byte[] value) {
            return 0;
        }
    }

    /** This operator's input filter: no record passes (watermarks and barriers do). */
    public static FilterFunction<byte[]> noRecords() {
        return new NoRecords();
    }

    private static final class NoRecords implements FilterFunction<byte[]> {
        private static final long serialVersionUID = 1L;

        @Override
        public boolean filter(byte[] value) {
            return false;
        }
    }

    @Override
    public void open(OpenContext openContext) throws Exception {
        // Version 1's states, by name and type.
        pendingState = getRuntimeContext().getListState(
                new ListStateDescriptor<>("pending-batches", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        emittedThroughState = getRuntimeContext().getState(new ValueStateDescriptor<>("emitted-through", Types.LONG));
    }

    @Override
    public void processElement(byte[] value, Context ctx, Collector<byte[]> out) {
        throw new IllegalStateException("UnpartitionedAnalyticsState takes no records (its input is filtered by noRecords)");
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<byte[]> out) throws Exception {
        Iterable<byte[]> stored = pendingState.get();
        Long emittedThrough = emittedThroughState.value();
        if (stored != null) {
            for (byte[] batch : stored) {
                ScoredColumns columns = ScoredColumns.read(batch);
                // Version 1 counted a record in no window due at or before the watermark it had
                // emitted windows through, whenever the record came: the same rule, carried by the record.
                for (int r = 0; emittedThrough != null && r < columns.size(); r++) {
                    columns.watermarks[r] = Math.max(columns.watermarks[r], emittedThrough);
                }
                GroupSplit.split(columns, groupBy, out);
            }
        }
        pendingState.clear();
        emittedThroughState.clear();
    }
}
