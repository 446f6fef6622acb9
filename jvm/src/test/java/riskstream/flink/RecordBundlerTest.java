package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.stream.Collectors;

import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.junit.jupiter.api.Test;

/**
 * When RecordBundler emits a bundle, driven by Flink's operator test harness: the harness calls the
 * operator as a task would, and its processing time only moves when a test sets it, so timers fire
 * exactly when a test says.
 */
class RecordBundlerTest {

    private static final long NEVER_MS = 3_600_000L; // a delay no test reaches
    private static final long NO_CEILING = 0L;

    private static OneInputStreamOperatorTestHarness<String, byte[]> harnessOf(RecordBundler bundler) throws Exception {
        OneInputStreamOperatorTestHarness<String, byte[]> harness = new OneInputStreamOperatorTestHarness<>(bundler);
        harness.open();
        return harness;
    }

    /** The bundles emitted so far, decoded from UTF-8 as the Python worker decodes them. */
    private static List<String> bundles(OneInputStreamOperatorTestHarness<String, byte[]> harness) {
        return harness.extractOutputValues().stream().map(bytes -> new String(bytes, StandardCharsets.UTF_8))
                .collect(Collectors.toList());
    }

    private static void process(OneInputStreamOperatorTestHarness<String, byte[]> harness, String... records)
            throws Exception {
        for (String record : records) {
            harness.processElement(record, 0L);
        }
    }

    @Test
    void aBundleIsItsRecordsAsUtf8AndDecodesToThemCharacterForCharacter() throws Exception {
        // A payload's bytes arrive as ISO-8859-1 characters (0x80-0xFF among them); a path may hold
        // any character, including one outside the Basic Multilingual Plane.
        String payload = "{\"amount\": 1}\u0080\u00ff\u00e9";
        String path = "file:1:/data/caf\u00e9-\u6570\u636e-\ud83d\ude00.jsonl\t" + payload;
        try (var harness = harnessOf(new RecordBundler(2, NEVER_MS, false, NO_CEILING))) {
            process(harness, path, "file:2:/a\t" + payload);
            byte[] bundle = harness.extractOutputValues().get(0);
            assertEquals(path + "\nfile:2:/a\t" + payload, new String(bundle, StandardCharsets.UTF_8));
            assertEquals((path + "\nfile:2:/a\t" + payload).getBytes(StandardCharsets.UTF_8).length, bundle.length);
        }
    }

    @Test
    void emitsABundleWhenItHoldsMaxRecords() throws Exception {
        try (var harness = harnessOf(new RecordBundler(3, NEVER_MS, false, NO_CEILING))) {
            process(harness, "a", "b", "c", "d");
            assertEquals(List.of("a\nb\nc"), bundles(harness));
        }
    }

    @Test
    void emitsThePendingBundleBeforeTheCheckpointBarrier() throws Exception {
        try (var harness = harnessOf(new RecordBundler(100, NEVER_MS, false, NO_CEILING))) {
            process(harness, "a", "b");
            assertEquals(List.of(), bundles(harness));
            // A task calls this just before it sends the barrier on: what is emitted here is
            // before the barrier, so the checkpoint needs no state for it.
            harness.prepareSnapshotPreBarrier(1L);
            assertEquals(List.of("a\nb"), bundles(harness));
        }
    }

    @Test
    void emitsABundleWhenItsFirstRecordHasWaitedMaxDelay() throws Exception {
        try (var harness = harnessOf(new RecordBundler(100, 50, false, NO_CEILING))) {
            harness.setProcessingTime(1_000);
            process(harness, "a");
            harness.setProcessingTime(1_030);
            process(harness, "b");
            harness.setProcessingTime(1_049);
            assertEquals(List.of(), bundles(harness));
            harness.setProcessingTime(1_050);
            assertEquals(List.of("a\nb"), bundles(harness));

            process(harness, "c"); // a new bundle waits from its own first record
            harness.setProcessingTime(1_099);
            assertEquals(List.of("a\nb"), bundles(harness));
            harness.setProcessingTime(1_100);
            assertEquals(List.of("a\nb", "c"), bundles(harness));
        }
    }

    @Test
    void theTimerOfABundleEmittedWhenFullDoesNotEmitTheNextOneEarly() throws Exception {
        try (var harness = harnessOf(new RecordBundler(2, 50, false, NO_CEILING))) {
            harness.setProcessingTime(1_000);
            process(harness, "a", "b"); // full: emitted at once, its timer (1 050) stays registered
            harness.setProcessingTime(1_040);
            process(harness, "c"); // due at 1 090
            harness.setProcessingTime(1_050);
            assertEquals(List.of("a\nb"), bundles(harness));
            harness.setProcessingTime(1_090);
            assertEquals(List.of("a\nb", "c"), bundles(harness));
        }
    }

    @Test
    void emitsThePendingBundleAtTheEndOfInput() throws Exception {
        try (var harness = harnessOf(new RecordBundler(100, NEVER_MS, false, NO_CEILING))) {
            process(harness, "a", "b");
            harness.endInput();
            assertEquals(List.of("a\nb"), bundles(harness));
        }
    }

    @Test
    void takesInAtMostMaxRecordsPerSecondAfterABurstOfOneSecondsWorth() throws Exception {
        int perSecond = 1_000;
        int records = 2_500;
        try (var harness = harnessOf(new RecordBundler(100, NEVER_MS, false, perSecond))) {
            long started = System.nanoTime();
            for (int i = 0; i < records; i++) {
                harness.processElement("r" + i, 0L);
            }
            double seconds = (System.nanoTime() - started) / 1e9;
            // The first second's worth passes at once, the rest at the ceiling: 1.5 s at least, less
            // the last wait the operator skips because it is under a millisecond.
            double fastestAllowed = (double) (records - perSecond) / perSecond - 0.002;
            assertTrue(seconds >= fastestAllowed,
                    records + " records in " + seconds + " s, under the " + fastestAllowed + " s a ceiling of "
                            + perSecond + "/s allows");
            assertEquals(records / 100, bundles(harness).size()); // nothing lost on the way
        }
    }

    /**
     * What the operator emitted, in order: each bundle as its text, each watermark as W and its
     * time, each watermark status as IDLE or ACTIVE.
     */
    private static List<String> emitted(OneInputStreamOperatorTestHarness<String, byte[]> harness) {
        return harness.getOutput().stream().map(element -> {
            if (element instanceof WatermarkStatus) {
                return ((WatermarkStatus) element).isIdle() ? "IDLE" : "ACTIVE";
            }
            if (element instanceof Watermark) {
                return "W" + ((Watermark) element).getTimestamp();
            }
            return new String((byte[]) ((StreamRecord<?>) element).getValue(), StandardCharsets.UTF_8);
        }).collect(Collectors.toList());
    }

    @Test
    void aQuietInputGetsItsRecordsWatermarkAndAnIdleMarkAndIsActiveBeforeItsNextRecord() throws Exception {
        long idleMs = 1_000;
        long outOfOrdernessMs = 100;
        var bundler = new RecordBundler(100, 50, false, NO_CEILING).quietAfter(idleMs, outOfOrdernessMs);
        try (var harness = new OneInputStreamOperatorTestHarness<String, byte[]>(bundler)) {
            harness.setProcessingTime(0);
            harness.open();
            harness.processWatermarkStatus(WatermarkStatus.IDLE); // the source's, not passed on
            harness.processElement("a", 5_000L);
            harness.processWatermark(4_000L); // the source's last watermark: behind its records
            harness.setProcessingTime(idleMs); // a record came in the first period: not quiet yet
            harness.processElement("b", 4_500L); // out of order: the largest timestamp stays 5,000
            harness.setProcessingTime(2 * idleMs); // ... and in the second
            assertEquals(List.of("a", "W4000", "b"), emitted(harness));
            harness.setProcessingTime(3 * idleMs - 1);
            assertEquals(List.of("a", "W4000", "b"), emitted(harness));
            harness.setProcessingTime(3 * idleMs); // a whole period without a record: the watermark
            assertEquals(List.of("a", "W4000", "b", "W4899"), emitted(harness));
            harness.setProcessingTime(4 * idleMs); // another: the idle mark
            assertEquals(List.of("a", "W4000", "b", "W4899", "IDLE"), emitted(harness));
            harness.setProcessingTime(6 * idleMs); // said once
            harness.processWatermark(4_200L); // the source's, behind what was said: not passed on
            harness.processElement("c", 6_000L);
            harness.processElement("d", 6_100L);
            harness.processWatermark(5_500L);
            assertEquals(List.of("a", "W4000", "b", "W4899", "IDLE", "ACTIVE", "c\nd", "W5500"), emitted(harness));
        }
    }

    /**
     * A bundler quiet after 1 000 ms (out-of-orderness 100 ms) that got one record ("a", event time
     * 5 000) and then none for three periods: it has emitted "a", its watermark and the idle mark.
     */
    private static OneInputStreamOperatorTestHarness<String, byte[]> quietAfterOneRecord() throws Exception {
        long idleMs = 1_000;
        var harness = new OneInputStreamOperatorTestHarness<String, byte[]>(
                new RecordBundler(100, 50, false, NO_CEILING).quietAfter(idleMs, 100));
        harness.setProcessingTime(0);
        harness.open();
        harness.processElement("a", 5_000L);
        harness.setProcessingTime(idleMs); // a record came in the first period
        harness.setProcessingTime(2 * idleMs); // none in the second: the watermark
        harness.setProcessingTime(3 * idleMs); // ... in the third: the idle mark
        assertEquals(List.of("a", "W4899", "IDLE"), emitted(harness));
        return harness;
    }

    @Test
    void theEndOfInputAfterAQuietSpellMakesTheOutputActiveBeforeItsWatermark() throws Exception {
        try (var harness = quietAfterOneRecord()) {
            // Stopped with --drain (or a bounded input's end): downstream ignores a watermark that
            // comes on an idle input, so this one must come on an active one.
            harness.processWatermark(Long.MAX_VALUE);
            assertEquals(List.of("a", "W4899", "IDLE", "ACTIVE", "W" + Long.MAX_VALUE), emitted(harness));
        }
    }

    @Test
    void theSourcesIdleMarkIsNotPassedOnAndWithoutQuietAfterTheOutputIsNeverIdle() throws Exception {
        try (var harness = harnessOf(new RecordBundler(100, NEVER_MS, false, NO_CEILING))) {
            harness.processWatermarkStatus(WatermarkStatus.IDLE); // a source before its first watermark
            harness.processElement("a", 5_000L);
            harness.setProcessingTime(NEVER_MS * 10);
            harness.processElement("b", 6_000L);
            harness.endInput();
            // "a" when its delay ran out; the end of input is the end of event time
            assertEquals(List.of("a", "b", "W" + Long.MAX_VALUE), emitted(harness));
        }
    }

    @Test
    void theEndOfInputEmitsTheEndOfEventTimeOnceEvenWhenTheSourcesChainDroppedIt() throws Exception {
        try (var harness = quietAfterOneRecord()) {
            // Chained to a source that was idle, Flink 2.2 drops the end-of-input watermark before
            // this operator (FLINK-40499); the drained input's end is all it sees.
            harness.endInput();
            assertEquals(List.of("a", "W4899", "IDLE", "ACTIVE", "W" + Long.MAX_VALUE), emitted(harness));
        }
        try (var harness = harnessOf(new RecordBundler(100, NEVER_MS, false, NO_CEILING))) {
            harness.processElement("a", 5_000L);
            harness.processWatermark(Long.MAX_VALUE); // it came: not again
            harness.endInput();
            assertEquals(List.of("a", "W" + Long.MAX_VALUE), emitted(harness));
        }
    }
}
