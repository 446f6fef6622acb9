package riskstream.flink;

import java.io.Serializable;

/**
 * At most {@code maxRecordsPerSecond} records a second through the operator that calls
 * {@link #waitForTurn} before each record (and through the source chained before it), bursts
 * bounded to one second's worth: a ceiling for replaying a backlog without flooding what comes
 * after, and a way to let a test or drill watch a job work through a fixed input.
 */
final class Pace implements Serializable {

    private static final long serialVersionUID = 1L;
    private final long maxRecordsPerSecond;
    private transient long nextRecordDueNanos;

    /** @param maxRecordsPerSecond the ceiling (>= 1) */
    Pace(long maxRecordsPerSecond) {
        if (maxRecordsPerSecond < 1) {
            throw new IllegalArgumentException("maxRecordsPerSecond must be >= 1");
        }
        this.maxRecordsPerSecond = maxRecordsPerSecond;
    }

    /** Returns once the next record may pass (sleeping the calling task's thread until then). */
    void waitForTurn() throws InterruptedException {
        long now = System.nanoTime();
        nextRecordDueNanos = Math.max(nextRecordDueNanos, now - 1_000_000_000L) + 1_000_000_000L / maxRecordsPerSecond;
        long aheadNanos = nextRecordDueNanos - now;
        if (aheadNanos > 1_000_000L) {
            Thread.sleep(aheadNanos / 1_000_000L);
        }
    }
}
