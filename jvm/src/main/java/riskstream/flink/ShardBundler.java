package riskstream.flink;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.TreeMap;

import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.api.java.typeutils.TupleTypeInfo;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;

/**
 * Bundles {@link LabelRouter}'s lines per shard, so Python is called once per bundle of a shard
 * rather than once per label.
 *
 * <p>Input: LabelRouter's lines (UTF-8 bytes), whose first field, up to the first {@code '\t'}, is
 * the shard (a non-negative int). Output: {@code (shard, bundle)}, the bundle being that shard's
 * lines in arrival order joined with {@code '\n'}, as UTF-8 bytes, each line unchanged (its shard
 * field included). Its type is {@link #outputType()}.
 *
 * <p>A shard's bundle is emitted when it holds {@code maxRecords} lines and when its first line has
 * waited {@code maxDelayMs} milliseconds of processing time; every pending bundle is emitted, in
 * ascending shard order, before each checkpoint barrier, before each watermark is forwarded and at
 * the end of input. Nothing is held across a checkpoint, so the operator needs no state, and no line
 * is ever behind a watermark that passed it. Lines are never reordered within a shard, dropped or
 * changed.
 *
 * <p>An idle mark (Flink's {@link WatermarkStatus}) from upstream is passed on only once the input
 * has stayed idle for {@code idleDelayMs} more: the Python operator after this one holds a
 * watermark until its current bundle of work is done, and drops it if an idle mark has passed
 * meanwhile (PyFlink 2.2, AbstractPythonFunctionOperator), which would leave event time downstream
 * behind for as long as the input stays quiet. An active mark, or a line, ends the hold.
 */
public final class ShardBundler extends AbstractStreamOperator<Tuple2<Integer, byte[]>>
        implements OneInputStreamOperator<byte[], Tuple2<Integer, byte[]>>, BoundedOneInput {

    private static final long serialVersionUID = 1L;
    private final int maxRecords;
    private final long maxDelayMs;
    private final long idleDelayMs;
    // By shard, so that flushing all of them goes in ascending shard order.
    private transient TreeMap<Integer, Pending> pending;
    // Whether the input is idle, whether this operator said so downstream, and a count of idle
    // spells, so that the timer of a spell already over does not say idle in a later one early.
    private transient boolean inputIdle;
    private transient boolean saidIdle;
    private transient long idleSpell;

    /** One shard's bundle being filled. */
    private static final class Pending {
        final ByteArrayOutputStream bytes = new ByteArrayOutputStream(1 << 12);
        int count;
        // Counts the shard's emitted bundles. Each timer knows the number of the bundle it was set
        // for, so the timer of a bundle already emitted (full, or before a barrier or watermark) does
        // not emit a later one of the same shard early.
        long bundleNumber;
    }

    /**
     * @param maxRecords the most lines in a bundle (>= 1)
     * @param maxDelayMs the longest a shard's first pending line waits, ms of processing time (>= 0;
     *     0 emits every line as it comes)
     */
    public ShardBundler(int maxRecords, long maxDelayMs) {
        this(maxRecords, maxDelayMs, 0L);
    }

    /**
     * @param idleDelayMs how long an idle input stays idle before this operator says so downstream,
     *     ms of processing time (>= 0)
     */
    public ShardBundler(int maxRecords, long maxDelayMs, long idleDelayMs) {
        if (maxRecords < 1 || maxDelayMs < 0 || idleDelayMs < 0) {
            throw new IllegalArgumentException("maxRecords must be >= 1, maxDelayMs and idleDelayMs >= 0");
        }
        this.maxRecords = maxRecords;
        this.maxDelayMs = maxDelayMs;
        this.idleDelayMs = idleDelayMs;
    }

    /**
     * The output's type: {@code Tuple2<Integer, byte[]>}, what the Python side declares as {@code
     * Types.TUPLE([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])}.
     */
    public static TypeInformation<Tuple2<Integer, byte[]>> outputType() {
        return new TupleTypeInfo<>(BasicTypeInfo.INT_TYPE_INFO, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    }

    /** Starts with no bundle pending. */
    @Override
    public void open() throws Exception {
        super.open();
        pending = new TreeMap<>();
    }

    /**
     * Adds a line to its shard's bundle.
     *
     * @throws IllegalArgumentException if the line does not start with a shard number: LabelRouter
     *     always writes one, so this is a bug, not data to route somewhere
     */
    @Override
    public void processElement(StreamRecord<byte[]> element) throws Exception {
        if (inputIdle) {
            beActive();
        }
        byte[] line = element.getValue();
        int shard = shardOf(line);
        Pending bundle = pending.computeIfAbsent(shard, s -> new Pending());
        if (bundle.count > 0) {
            bundle.bytes.write('\n');
        }
        bundle.bytes.writeBytes(line);
        bundle.count++;
        if (bundle.count >= maxRecords || maxDelayMs == 0) {
            emit(shard, bundle);
        } else if (bundle.count == 1) {
            long timedBundle = bundle.bundleNumber;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + maxDelayMs, time -> emitIfPending(shard, timedBundle));
        }
    }

    private void emitIfPending(int shard, long timedBundle) {
        Pending bundle = pending.get(shard);
        if (bundle.bundleNumber == timedBundle) {
            emit(shard, bundle);
        }
    }

    /** Emits every pending bundle, so that none is held across the checkpoint. */
    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        emitAll();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    /** Emits every pending bundle, then forwards the watermark: no line is ever behind a watermark that passed it. */
    @Override
    public void processWatermark(Watermark mark) throws Exception {
        emitAll();
        super.processWatermark(mark);
    }

    /** Passes an idle mark on after {@code idleDelayMs}, unless the input is active again by then. */
    @Override
    public void processWatermarkStatus(WatermarkStatus status) {
        if (!status.isIdle()) {
            beActive();
        } else if (!inputIdle) {
            inputIdle = true;
            long spell = ++idleSpell;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + idleDelayMs, time -> sayIdle(spell));
        }
    }

    private void sayIdle(long spell) {
        if (spell == idleSpell && inputIdle && !saidIdle) {
            emitAll();
            saidIdle = true;
            output.emitWatermarkStatus(WatermarkStatus.IDLE);
        }
    }

    private void beActive() {
        inputIdle = false;
        idleSpell++;
        if (saidIdle) {
            saidIdle = false;
            output.emitWatermarkStatus(WatermarkStatus.ACTIVE);
        }
    }

    /** Emits every pending bundle at the end of a bounded input. */
    @Override
    public void endInput() throws Exception {
        emitAll();
    }

    /** Emits every pending bundle when the operator finishes (end of input or stop with a savepoint). */
    @Override
    public void finish() throws Exception {
        emitAll();
        super.finish();
    }

    private void emitAll() {
        for (Map.Entry<Integer, Pending> shard : pending.entrySet()) {
            emit(shard.getKey(), shard.getValue());
        }
    }

    private void emit(int shard, Pending bundle) {
        if (bundle.count == 0) {
            return;
        }
        output.collect(new StreamRecord<>(Tuple2.of(shard, bundle.bytes.toByteArray())));
        bundle.bytes.reset();
        bundle.count = 0;
        bundle.bundleNumber++;
    }

    /** The decimal number before the line's first {@code '\t'}, read from the bytes without decoding. */
    private static int shardOf(byte[] line) {
        long shard = 0;
        int i = 0;
        for (; i < line.length && line[i] != '\t'; i++) {
            int digit = line[i] - '0';
            if (digit < 0 || digit > 9 || shard > Integer.MAX_VALUE) {
                break;
            }
            shard = shard * 10 + digit;
        }
        if (i == 0 || i == line.length || line[i] != '\t' || shard > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("not a LabelRouter line (no shard number before a tab): "
                    + new String(line, 0, Math.min(line.length, 100), StandardCharsets.UTF_8));
        }
        return (int) shard;
    }
}
