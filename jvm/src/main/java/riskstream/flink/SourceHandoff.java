package riskstream.flink;

import java.nio.charset.StandardCharsets;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;

/**
 * Chained to the source when an exchange (SplitWatermarkTagger's key) comes before RecordBundler:
 * does for the source's task what RecordBundler does when it is chained there itself. Records pass
 * on as their UTF-8 bytes (Flink copies a {@code byte[]} across the exchange in bulk, where it
 * serializes a {@code String} a character at a time), in order, at most {@code maxRecordsPerSecond} a second when that is > 0 ({@link Pace}: chained
 * to the source, it holds the source back; after the exchange it would only slow what the source
 * had already read into the exchange's buffers, and a savepoint would wait for all of it).
 * Watermark statuses pass on, but a watermark that comes while the output is idle makes it active
 * first: Flink 2.2's task output (RecordWriterOutput) drops a watermark while the status it last
 * sent is idle, and the one watermark that can come then is the end of input after a quiet spell
 * (a bounded input's, or a stop with --drain), which the end-of-input timers after it wait for.
 *
 * <p>That end-of-input watermark does not even reach this operator when the source was idle: Flink
 * 2.2 emits it into the source's chain output, which drops it too (FLINK-40499, open). So at the end
 * of input ({@link #endInput}, which Flink calls only when the input is drained: a bounded input's
 * end or a stop with --drain, never a stop with a savepoint to resume from) this operator emits it
 * itself, once.
 */
public final class SourceHandoff extends AbstractStreamOperator<byte[]>
        implements OneInputStreamOperator<String, byte[]>, BoundedOneInput {

    private static final long serialVersionUID = 1L;
    private final Pace pace;  // null: no ceiling
    private transient boolean idle;
    private transient boolean endOfEventTime;  // the end-of-input watermark has passed

    /** @param maxRecordsPerSecond the ceiling (>= 1), or 0 for none */
    public SourceHandoff(long maxRecordsPerSecond) {
        if (maxRecordsPerSecond < 0) {
            throw new IllegalArgumentException("maxRecordsPerSecond must be >= 0");
        }
        this.pace = maxRecordsPerSecond > 0 ? new Pace(maxRecordsPerSecond) : null;
    }

    @Override
    public void processElement(StreamRecord<String> element) throws Exception {
        if (pace != null) {
            pace.waitForTurn();
        }
        output.collect(element.replace(element.getValue().getBytes(StandardCharsets.UTF_8)));
    }

    @Override
    public void processWatermarkStatus(WatermarkStatus status) {
        idle = status.isIdle();
        output.emitWatermarkStatus(status);
    }

    @Override
    public void processWatermark(Watermark mark) {
        if (endOfEventTime) {
            return;
        }
        endOfEventTime = mark.getTimestamp() == Long.MAX_VALUE;
        if (idle) {
            idle = false;
            output.emitWatermarkStatus(WatermarkStatus.ACTIVE);
        }
        output.emitWatermark(mark); // no timers here: straight on
    }

    @Override
    public void endInput() {
        processWatermark(Watermark.MAX_WATERMARK);
    }
}
