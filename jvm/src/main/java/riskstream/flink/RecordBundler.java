package riskstream.flink;

import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Joins consecutive records into bundles so Python is called once per bundle rather than once per
 * record.
 *
 * <p>A bundle is the records in arrival order separated by {@code '\n'} (records must not contain
 * one), as UTF-8 bytes: Flink serializes a {@code byte[]} in bulk, both to the next task and to the
 * Python worker, where it serializes a {@code String} a character at a time (in this job that was
 * half of the JVM's CPU). It is emitted when it holds {@code maxRecords} records, when its first record has waited
 * {@code maxDelayMs} milliseconds, before every checkpoint barrier, before every watermark and at the
 * end of input. Because nothing is held across a checkpoint, the operator needs no state, and a
 * record is never delayed by more than {@code maxDelayMs} plus the time to process what is before
 * it. Records are never reordered, dropped or changed.
 *
 * <p>When {@code sequenced}, every bundle starts with a header line {@code #<stream>:<seq>}: the
 * stream names this operator instance in this run (its subtask index and a random id drawn when it
 * starts, so a restarted job never continues an old stream) and seq counts its bundles from 0. That
 * lets bundles be spread over several parallel workers and put back in order afterwards (see
 * udfs/ordering.py). No bundle is pending at a checkpoint, so the numbering needs no state.
 *
 * <p>With {@code maxRecordsPerSecond} > 0, this operator (and the source chained before it) takes
 * in at most that many records per second: a ceiling for replaying a backlog without flooding what
 * comes after, and a way to let a test or drill watch a job work through a fixed input. Bursts
 * are bounded to one second's worth.
 *
 * <p>Every record the source emits passes through this operator before any Python code sees it, so
 * it counts them in the accumulator {@link #RECORDS_READ} (summed over its subtasks): how many
 * records the job read, counted apart from its outputs, in the job's result whether the input
 * ended or the job was stopped with a savepoint (then: the records before the savepoint). Flink
 * keeps accumulators per execution attempt, so after a restart it counts from the restored
 * checkpoint on.
 *
 * <p>After {@link #quietAfter}, once no record has come for between {@code idleMs} and twice that,
 * the operator emits the watermark of every record it has seen (the largest timestamp, less the
 * source's out-of-orderness bound and 1 ms, as Flink's bounded-out-of-orderness watermarks), and
 * {@code idleMs} later, still without a record, marks its output idle (Flink's {@link
 * WatermarkStatus}); before its next record, active again.
 * Without {@link #quietAfter} its output is never idle.
 * An operator downstream that joins this stream with another then takes its event time from the
 * other alone while this one is quiet. The source does neither for a watched folder: when a file's
 * split ends, Flink 2.2 drops that split's watermark output, losing what the split read since the
 * last periodic watermark, and the source stays active at that watermark, holding back every
 * event-time timer downstream until another file comes. As with Flink's own idleness, a record
 * that comes after a quiet spell with an event time below the watermark is late.
 */
public final class RecordBundler extends AbstractStreamOperator<byte[]>
        implements OneInputStreamOperator<String, byte[]>, BoundedOneInput {

    private static final long serialVersionUID = 1L;
    /** The name of the accumulator that counts records read (a {@link LongCounter}). */
    public static final String RECORDS_READ = "records-read";
    /** The accumulator of a label stream's bundler: labels read, counted apart from transactions. */
    public static final String LABELS_READ = "labels-read";
    private final int maxRecords;
    private final long maxDelayMs;
    private final boolean sequenced;
    private final Pace pace;  // null: no ceiling
    private final String accumulator;
    private long idleMs;
    private long outOfOrdernessMs;
    private transient String stream;
    private transient StringBuilder bundle;
    private transient int count;
    // Counts emitted bundles. Each timer knows the number of the bundle it was set for, so the timer
    // of a bundle already emitted (full, or before a barrier) does not emit a later one early.
    private transient long bundleNumber;
    private transient LongCounter recordsRead;
    // Idleness: whether a record came since the last check, and whether this operator found its
    // input quiet (and said so to the operators after it).
    private transient boolean recordSinceCheck;
    private transient boolean quiet;
    private transient long maxTimestamp;
    private transient long lastWatermark;

    public RecordBundler(int maxRecords, long maxDelayMs, boolean sequenced, long maxRecordsPerSecond) {
        this(maxRecords, maxDelayMs, sequenced, maxRecordsPerSecond, RECORDS_READ);
    }

    /** Counts its records in the accumulator {@code accumulator} ({@link #RECORDS_READ} or {@link #LABELS_READ}). */
    public RecordBundler(int maxRecords, long maxDelayMs, boolean sequenced, long maxRecordsPerSecond,
                         String accumulator) {
        if (maxRecords < 1 || maxDelayMs < 0 || maxRecordsPerSecond < 0) {
            throw new IllegalArgumentException("maxRecords must be >= 1, maxDelayMs and maxRecordsPerSecond >= 0");
        }
        this.maxRecords = maxRecords;
        this.maxDelayMs = maxDelayMs;
        this.sequenced = sequenced;
        this.pace = maxRecordsPerSecond > 0 ? new Pace(maxRecordsPerSecond) : null;
        this.accumulator = accumulator;
    }

    /**
     * Makes this operator emit its records' watermark and mark its output idle once its input has
     * been quiet for {@code idleMs} milliseconds (> 0), its records' timestamps being event times
     * whose source's watermarks trail them by {@code outOfOrdernessMs} (>= 0). Returns this operator.
     */
    public RecordBundler quietAfter(long idleMs, long outOfOrdernessMs) {
        if (idleMs < 1 || outOfOrdernessMs < 0) {
            throw new IllegalArgumentException("idleMs must be >= 1 and outOfOrdernessMs >= 0");
        }
        this.idleMs = idleMs;
        this.outOfOrdernessMs = outOfOrdernessMs;
        return this;
    }

    @Override
    public void open() throws Exception {
        super.open();
        bundle = new StringBuilder(1 << 16);
        recordsRead = new LongCounter();
        getRuntimeContext().addAccumulator(accumulator, recordsRead);
        stream = getRuntimeContext().getTaskInfo().getIndexOfThisSubtask() + "-"
                + Long.toHexString(new java.security.SecureRandom().nextLong());
        maxTimestamp = Long.MIN_VALUE;
        lastWatermark = Long.MIN_VALUE;
        if (idleMs > 0) {
            scheduleIdleCheck();
        }
    }

    @Override
    public void processElement(StreamRecord<String> element) throws Exception {
        if (pace != null) {
            pace.waitForTurn();
        }
        recordsRead.add(1L);
        recordSinceCheck = true;
        if (element.hasTimestamp() && element.getTimestamp() > maxTimestamp) {
            maxTimestamp = element.getTimestamp();
        }
        if (quiet) {
            quiet = false;
            output.emitWatermarkStatus(WatermarkStatus.ACTIVE);
        }
        if (count > 0) {
            bundle.append('\n');
        } else if (sequenced) {
            bundle.append('#').append(stream).append(':').append(bundleNumber).append('\n');
        }
        bundle.append(element.getValue());
        count++;
        if (count >= maxRecords) {
            emit();
        } else if (count == 1 && maxDelayMs > 0) {
            long timedBundle = bundleNumber;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + maxDelayMs, time -> emitIfPending(timedBundle));
        } else if (count == 1) {
            emit();
        }
    }

    private void emitIfPending(long timedBundle) {
        if (timedBundle == bundleNumber) {
            emit();
        }
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        emit();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        emit();
        if (mark.getTimestamp() > lastWatermark) { // after a quiet spell the source's can be behind
            lastWatermark = mark.getTimestamp();
            // Only the end of input (or a drain) passes this one while quiet, and a watermark on an
            // idle output is ignored downstream: the end-of-input timers would never fire.
            if (quiet) {
                quiet = false;
                output.emitWatermarkStatus(WatermarkStatus.ACTIVE);
            }
            super.processWatermark(mark);
        }
    }

    /**
     * Its output's status is its own, from its records alone: the source's can say idle while its
     * records flow (before a split's first periodic watermark), and a split read whole between two
     * periodic watermarks never makes it active.
     */
    @Override
    public void processWatermarkStatus(WatermarkStatus status) {
    }

    private void scheduleIdleCheck() {
        long now = getProcessingTimeService().getCurrentProcessingTime();
        getProcessingTimeService().registerTimer(now + idleMs, time -> checkIdle());
    }

    // A first check without a record since the last one emits the watermark; the next, the idle
    // mark: a Python operator after this one holds a watermark until its current bundle of work is
    // done and drops it if an idle mark has passed meanwhile (PyFlink 2.2).
    private void checkIdle() {
        if (!recordSinceCheck && !quiet) {
            emit();
            if (maxTimestamp != Long.MIN_VALUE && maxTimestamp - outOfOrdernessMs - 1 > lastWatermark) {
                lastWatermark = maxTimestamp - outOfOrdernessMs - 1;
                output.emitWatermark(new Watermark(lastWatermark));
            } else {
                quiet = true;
                output.emitWatermarkStatus(WatermarkStatus.IDLE);
            }
        }
        recordSinceCheck = false;
        scheduleIdleCheck();
    }

    /**
     * Flink calls this only when the input is drained (a bounded input's end, a stop with --drain):
     * event time has ended. Flink emitted the end-of-input watermark before, but when this operator
     * is chained to a source that was idle, the chain dropped it (FLINK-40499, open in Flink 2.2),
     * so it is emitted here unless it came.
     */
    @Override
    public void endInput() throws Exception {
        processWatermark(Watermark.MAX_WATERMARK);
    }

    @Override
    public void finish() throws Exception {
        emit();
        super.finish();
    }

    private void emit() {
        if (count == 0) {
            return;
        }
        output.collect(new StreamRecord<>(bundle.toString().getBytes(StandardCharsets.UTF_8)));
        bundle.setLength(0);
        count = 0;
        bundleNumber++;
    }
}
