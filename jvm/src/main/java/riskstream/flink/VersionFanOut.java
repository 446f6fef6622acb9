package riskstream.flink;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;

/**
 * Each global model version (a message of the model-versions topic) as one copy per shard, {@code
 * (shard, message)}, for the scoring operator's second input (keyed by shard, so every shard, on
 * whichever subtask, gets the version). Every subtask gets every version (a broadcast from the
 * one-reader source) and emits the copies of its own shards, those whose number modulo the
 * subtasks is its index: so a shard's copies always take the same way, in the order the versions
 * were read, and the edge to the next operator can be a forward one at the job's parallelism.
 *
 * <p>Versions carry no event time. This operator says so downstream at once, marking its output
 * idle, and forwards none of its input's watermarks: otherwise the scoring operator's event time,
 * the smaller of its two inputs', would wait for the versions source, which in a bounded run ends
 * only after the scoring operator's end-of-input timers have fired (they send its last partials).
 * Idle, not the largest watermark: where the versions share the scoring operator's second input
 * with the routed labels, an idle output leaves that input's event time to the labels (and to the
 * transactions when the labels are idle too), as without the global model.
 */
public final class VersionFanOut extends AbstractStreamOperator<Tuple2<Integer, byte[]>>
        implements OneInputStreamOperator<byte[], Tuple2<Integer, byte[]>> {
    private static final long serialVersionUID = 1L;
    private final int shards;

    /** @param shards performance.shards (>= 1) */
    public VersionFanOut(int shards) {
        if (shards < 1) {
            throw new IllegalArgumentException("shards must be >= 1");
        }
        this.shards = shards;
    }

    /** The output's type, as ShardBundler's: {@code Tuple2<Integer, byte[]>}. */
    public static TypeInformation<Tuple2<Integer, byte[]>> outputType() {
        return ShardBundler.outputType();
    }

    @Override
    public void open() throws Exception {
        super.open();
        output.emitWatermarkStatus(WatermarkStatus.IDLE);
    }

    @Override
    public void processElement(StreamRecord<byte[]> element) {
        byte[] version = element.getValue();
        int subtasks = getRuntimeContext().getTaskInfo().getNumberOfParallelSubtasks();
        int index = getRuntimeContext().getTaskInfo().getIndexOfThisSubtask();
        for (int shard = index; shard < shards; shard += subtasks) {
            output.collect(new StreamRecord<>(Tuple2.of(shard, version)));
        }
    }

    @Override
    public void processWatermark(Watermark mark) {
        // Event time is the transactions' (see the class comment).
    }

    @Override
    public void processWatermarkStatus(WatermarkStatus status) {
        // The same: this output stays idle.
    }
}
