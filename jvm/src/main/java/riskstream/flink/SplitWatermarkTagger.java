package riskstream.flink;

import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeHint;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Tags every source record (as UTF-8 bytes, from SourceHandoff) with its split's watermark at its
 * arrival: {@code "@<watermark>\t"} before the record, as a String, where a split is a file or a Kafka partition and its watermark is the largest
 * event time (the record's timestamp, see {@link EventTime}) seen so far in the split, this record
 * included, minus {@code outOfOrdernessMs}; {@link Long#MIN_VALUE} before the split's first event
 * time. The Python side counts a record late for each window whose end plus the allowed lateness its
 * split's watermark had reached: that depends only on the split's own order, so it is the same in
 * every run, however splits interleave.
 *
 * <p>Runs on a stream keyed by split ({@link #bySplit}), which keeps each split's order, and keeps
 * each split's largest event time in keyed state, so a restored job tags as the failed one would
 * have and the figure moves with its key group when the parallelism changes. Keyed rather than
 * chained to the source: Flink 2.2 declines every checkpoint of a task whose vertex has union list
 * state (this operator's state until this change) once some of its subtasks have finished, which a
 * file source subtask with no file to read does at once; a keyed operator's subtasks only finish
 * once every source subtask has. Watermarks pass on unchanged.
 *
 * <p>Savepoints of the chained version hold the figures as union list state
 * ({@link #LEGACY_STATE_NAME}): restored, they seed the splits that have no keyed figure yet.
 */
public final class SplitWatermarkTagger extends AbstractStreamOperator<String>
        implements OneInputStreamOperator<byte[], String> {

    private static final long serialVersionUID = 2L;
    /** The union list state of (split, largest event time) in which the chained version kept its figures. */
    static final String LEGACY_STATE_NAME = "split-max-event-time";
    private final long outOfOrdernessMs;
    private transient ValueState<Long> maxEventTime;
    // From a savepoint of the chained version: every split's largest event time (empty otherwise).
    private transient Map<String, Long> legacyMaxEventTime;

    public SplitWatermarkTagger(long outOfOrdernessMs) {
        if (outOfOrdernessMs < 0) {
            throw new IllegalArgumentException("outOfOrdernessMs must be >= 0");
        }
        this.outOfOrdernessMs = outOfOrdernessMs;
    }

    /** The key this operator's input must be keyed by: the record's split (see {@link #splitOf}). */
    public static KeySelector<byte[], String> bySplit() {
        return SplitWatermarkTagger::splitOf;
    }

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        maxEventTime = context.getKeyedStateStore().getState(
                new ValueStateDescriptor<>("split-largest-event-time", Types.LONG));
        legacyMaxEventTime = new HashMap<>();
        // Only a restored savepoint of the chained version has it; registering it otherwise would
        // bring the union list state back.
        if (context.getOperatorStateStore().getRegisteredStateNames().contains(LEGACY_STATE_NAME)) {
            ListState<Tuple2<String, Long>> legacy = context.getOperatorStateStore().getUnionListState(
                    new ListStateDescriptor<>(LEGACY_STATE_NAME, TypeInformation.of(new TypeHint<Tuple2<String, Long>>() {})));
            for (Tuple2<String, Long> split : legacy.get()) {
                legacyMaxEventTime.merge(split.f0, split.f1, Math::max);
            }
            legacy.clear();
        }
    }

    @Override
    public void processElement(StreamRecord<byte[]> element) throws Exception {
        String envelope = new String(element.getValue(), StandardCharsets.UTF_8);
        long eventTime = element.hasTimestamp() ? element.getTimestamp() : Long.MIN_VALUE;
        Long stored = maxEventTime.value();
        Long seen = stored != null || legacyMaxEventTime.isEmpty() ? stored
                : legacyMaxEventTime.get(splitOf(envelope));
        long largest = seen == null ? eventTime : Math.max(seen, eventTime);
        if (largest != Long.MIN_VALUE && (stored == null || largest > stored)) {
            maxEventTime.update(largest);
        }
        long watermark = largest == Long.MIN_VALUE ? Long.MIN_VALUE : largest - outOfOrdernessMs;
        output.collect(element.replace("@" + watermark + "\t" + envelope));
    }

    /** {@link #splitOf(String)} of a record's UTF-8 bytes (only its tag, before the first tab, is decoded). */
    static String splitOf(byte[] line) {
        int tab = 0;
        while (tab < line.length && line[tab] != '\t') {
            tab++;
        }
        return splitOf(new String(line, 0, tab, StandardCharsets.UTF_8));
    }

    /**
     * The split of a tagged record: {@code file:<path>} for {@code file:<line>:<path>},
     * {@code kafka:<partition>:<topic>} for {@code kafka:<partition>:<offset>:<topic>}, otherwise
     * the whole tag.
     */
    static String splitOf(String envelope) {
        int tab = envelope.indexOf('\t');
        String tag = tab < 0 ? envelope : envelope.substring(0, tab);
        int first = tag.indexOf(':');
        int second = first < 0 ? -1 : tag.indexOf(':', first + 1);
        if (second < 0) {
            return tag;
        }
        if (tag.startsWith("file:")) {
            return "file:" + tag.substring(second + 1);
        }
        if (tag.startsWith("kafka:")) {
            int third = tag.indexOf(':', second + 1);
            return third < 0 ? tag : tag.substring(0, second) + tag.substring(third);
        }
        return tag;
    }
}
