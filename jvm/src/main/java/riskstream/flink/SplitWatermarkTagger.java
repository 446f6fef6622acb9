package riskstream.flink;

import java.util.HashMap;
import java.util.Map;

import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeHint;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Tags every source record with its split's watermark at its arrival: {@code "@<watermark>\t"}
 * before the record, where a split is a file or a Kafka partition and its watermark is the largest
 * event time (the record's timestamp, see {@link EventTime}) seen so far in the split, this record
 * included, minus {@code outOfOrdernessMs}; {@link Long#MIN_VALUE} before the split's first event
 * time. The Python side counts a record late for each window whose end plus the allowed lateness its
 * split's watermark had reached: that depends only on the split's own order, so it is the same in
 * every run, however splits interleave.
 *
 * <p>The largest event time of every split is kept in operator state (union list state, so that
 * each split's figure survives a change of parallelism), so a restored job tags as the failed one
 * would have. Watermarks and records pass on unchanged otherwise.
 */
public final class SplitWatermarkTagger extends AbstractStreamOperator<String>
        implements OneInputStreamOperator<String, String> {

    private static final long serialVersionUID = 1L;
    private final long outOfOrdernessMs;
    private transient Map<String, Long> maxEventTime;
    private transient ListState<Tuple2<String, Long>> checkpointed;

    public SplitWatermarkTagger(long outOfOrdernessMs) {
        if (outOfOrdernessMs < 0) {
            throw new IllegalArgumentException("outOfOrdernessMs must be >= 0");
        }
        this.outOfOrdernessMs = outOfOrdernessMs;
    }

    @Override
    public void initializeState(StateInitializationContext context) throws Exception {
        super.initializeState(context);
        maxEventTime = new HashMap<>();
        checkpointed = context.getOperatorStateStore().getUnionListState(new ListStateDescriptor<>(
                "split-max-event-time", TypeInformation.of(new TypeHint<Tuple2<String, Long>>() {})));
        for (Tuple2<String, Long> split : checkpointed.get()) {
            maxEventTime.merge(split.f0, split.f1, Math::max);
        }
    }

    @Override
    public void snapshotState(StateSnapshotContext context) throws Exception {
        super.snapshotState(context);
        checkpointed.clear();
        for (Map.Entry<String, Long> split : maxEventTime.entrySet()) {
            checkpointed.add(Tuple2.of(split.getKey(), split.getValue()));
        }
    }

    @Override
    public void processElement(StreamRecord<String> element) throws Exception {
        String envelope = element.getValue();
        String split = splitOf(envelope);
        long eventTime = element.hasTimestamp() ? element.getTimestamp() : Long.MIN_VALUE;
        Long seen = maxEventTime.get(split);
        long largest = seen == null ? eventTime : Math.max(seen, eventTime);
        if (largest != Long.MIN_VALUE && (seen == null || largest > seen)) {
            maxEventTime.put(split, largest);
        }
        long watermark = largest == Long.MIN_VALUE ? Long.MIN_VALUE : largest - outOfOrdernessMs;
        output.collect(element.replace("@" + watermark + "\t" + envelope));
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
