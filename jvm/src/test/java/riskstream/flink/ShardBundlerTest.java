package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.typeinfo.BasicTypeInfo;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.api.java.typeutils.TupleTypeInfo;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.junit.jupiter.api.Test;

/**
 * When and how ShardBundler emits a shard's bundle, on Flink's operator test harness (whose
 * processing time moves only when a test sets it).
 */
class ShardBundlerTest {

    private static final long NEVER_MS = 3_600_000L; // a delay no test reaches

    private static OneInputStreamOperatorTestHarness<byte[], Tuple2<Integer, byte[]>> harnessOf(ShardBundler bundler)
            throws Exception {
        var harness = new OneInputStreamOperatorTestHarness<byte[], Tuple2<Integer, byte[]>>(bundler);
        harness.open();
        return harness;
    }

    private static void process(OneInputStreamOperatorTestHarness<byte[], Tuple2<Integer, byte[]>> harness,
                                String... lines) throws Exception {
        for (String line : lines) {
            harness.processElement(line.getBytes(StandardCharsets.UTF_8), 0L);
        }
    }

    /** A bundle as "shard: lines", its bytes decoded from UTF-8, a watermark as "W time", a status as IDLE or ACTIVE. */
    private static String describe(Object element) {
        if (element instanceof WatermarkStatus) {
            return ((WatermarkStatus) element).isIdle() ? "IDLE" : "ACTIVE";
        }
        if (element instanceof Watermark) {
            return "W " + ((Watermark) element).getTimestamp();
        }
        @SuppressWarnings("unchecked")
        Tuple2<Integer, byte[]> bundle = ((StreamRecord<Tuple2<Integer, byte[]>>) element).getValue();
        return bundle.f0 + ": " + new String(bundle.f1, StandardCharsets.UTF_8);
    }

    /** The bundles emitted so far, in order. */
    private static List<String> bundles(OneInputStreamOperatorTestHarness<byte[], Tuple2<Integer, byte[]>> harness) {
        List<String> bundles = new ArrayList<>();
        for (Object element : harness.getOutput()) {
            if (element instanceof StreamRecord) {
                bundles.add(describe(element));
            }
        }
        return bundles;
    }

    /** Bundles and watermarks, in the order they were emitted. */
    private static List<String> output(OneInputStreamOperatorTestHarness<byte[], Tuple2<Integer, byte[]>> harness) {
        List<String> output = new ArrayList<>();
        for (Object element : harness.getOutput()) {
            output.add(describe(element));
        }
        return output;
    }

    @Test
    void theOutputTypeIsAnIntAndBytes() {
        assertEquals(new TupleTypeInfo<>(BasicTypeInfo.INT_TYPE_INFO, PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO),
                ShardBundler.outputType());
    }

    @Test
    void groupsLinesByShardInArrivalOrderAndEmitsAFullBundleAtOnce() throws Exception {
        try (var harness = harnessOf(new ShardBundler(3, NEVER_MS))) {
            process(harness, "1\tlabel\ta", "0\tlabel\tb", "1\tunknown\tc", "12\tlabel\td", "0\tlabel\te");
            assertEquals(List.of(), bundles(harness));
            process(harness, "1\tlabel\tf"); // shard 1's third line
            assertEquals(List.of("1: 1\tlabel\ta\n1\tunknown\tc\n1\tlabel\tf"), bundles(harness));
            process(harness, "0\tlabel\tg", "0\tlabel\th"); // shard 0's third, then a fourth
            assertEquals(List.of("1: 1\tlabel\ta\n1\tunknown\tc\n1\tlabel\tf", "0: 0\tlabel\tb\n0\tlabel\te\n0\tlabel\tg"),
                    bundles(harness));
        }
    }

    @Test
    void aBundleIsItsLinesBytesUnchanged() throws Exception {
        String line = "3\tlabel\tcaf\u00e9-\ud83d\ude00\t1000\t1\t2000\tr\u00e9clamation\t0:1000";
        try (var harness = harnessOf(new ShardBundler(2, NEVER_MS))) {
            process(harness, line, "3\tlabel\tx\t\t\t");
            Tuple2<Integer, byte[]> bundle = harness.extractOutputValues().get(0);
            assertEquals(3, bundle.f0);
            assertArrayEquals((line + "\n3\tlabel\tx\t\t\t").getBytes(StandardCharsets.UTF_8), bundle.f1);
        }
    }

    @Test
    void emitsAShardsBundleWhenItsFirstLineHasWaitedMaxDelay() throws Exception {
        try (var harness = harnessOf(new ShardBundler(100, 50))) {
            harness.setProcessingTime(1_000);
            process(harness, "0\ta");
            harness.setProcessingTime(1_020);
            process(harness, "1\tb"); // shard 1 waits from its own first line: due at 1 070
            harness.setProcessingTime(1_030);
            process(harness, "0\tc");
            harness.setProcessingTime(1_049);
            assertEquals(List.of(), bundles(harness));
            harness.setProcessingTime(1_050);
            assertEquals(List.of("0: 0\ta\n0\tc"), bundles(harness));
            harness.setProcessingTime(1_069);
            assertEquals(List.of("0: 0\ta\n0\tc"), bundles(harness));
            harness.setProcessingTime(1_070);
            assertEquals(List.of("0: 0\ta\n0\tc", "1: 1\tb"), bundles(harness));
        }
    }

    @Test
    void theTimerOfABundleAlreadyEmittedDoesNotEmitTheShardsNextOneEarly() throws Exception {
        try (var harness = harnessOf(new ShardBundler(2, 50))) {
            harness.setProcessingTime(1_000);
            process(harness, "4\ta", "4\tb"); // full: emitted at once, its timer (1 050) stays registered
            harness.setProcessingTime(1_010);
            process(harness, "4\tc");
            harness.prepareSnapshotPreBarrier(1L); // emits c; its timer (1 060) stays registered too
            harness.setProcessingTime(1_040);
            process(harness, "4\td"); // due at 1 090
            harness.setProcessingTime(1_060);
            assertEquals(List.of("4: 4\ta\n4\tb", "4: 4\tc"), bundles(harness));
            harness.setProcessingTime(1_089);
            assertEquals(List.of("4: 4\ta\n4\tb", "4: 4\tc"), bundles(harness));
            harness.setProcessingTime(1_090);
            assertEquals(List.of("4: 4\ta\n4\tb", "4: 4\tc", "4: 4\td"), bundles(harness));
        }
    }

    @Test
    void emitsEveryPendingBundleInShardOrderBeforeTheCheckpointBarrier() throws Exception {
        try (var harness = harnessOf(new ShardBundler(100, NEVER_MS))) {
            process(harness, "2\ta", "17\tb", "0\tc", "2\td");
            assertEquals(List.of(), bundles(harness));
            // A task calls this just before it sends the barrier on: what is emitted here is before
            // the barrier, so the checkpoint needs no state for it.
            harness.prepareSnapshotPreBarrier(1L);
            assertEquals(List.of("0: 0\tc", "2: 2\ta\n2\td", "17: 17\tb"), bundles(harness));
            harness.prepareSnapshotPreBarrier(2L);
            assertEquals(3, bundles(harness).size(), "nothing pending, nothing emitted");
        }
    }

    @Test
    void emitsEveryPendingBundleBeforeForwardingAWatermark() throws Exception {
        try (var harness = harnessOf(new ShardBundler(100, NEVER_MS))) {
            process(harness, "3\ta", "1\tb");
            harness.processWatermark(new Watermark(5_000));
            process(harness, "3\tc");
            harness.processWatermark(new Watermark(6_000));
            assertEquals(List.of("1: 1\tb", "3: 3\ta", "W 5000", "3: 3\tc", "W 6000"), output(harness));
        }
    }

    @Test
    void passesAnIdleMarkOnOnlyOnceTheInputHasStayedIdleForIdleDelayMs() throws Exception {
        long idleDelayMs = 1_000;
        var bundler = new ShardBundler(100, NEVER_MS, idleDelayMs);
        try (var harness = new OneInputStreamOperatorTestHarness<byte[], Tuple2<Integer, byte[]>>(bundler)) {
            harness.setProcessingTime(0);
            harness.open();
            process(harness, "0\ta");
            harness.processWatermark(new Watermark(5_000));
            harness.processWatermarkStatus(WatermarkStatus.IDLE);
            harness.setProcessingTime(idleDelayMs - 1);
            assertEquals(List.of("0: 0\ta", "W 5000"), output(harness)); // not yet
            harness.processWatermarkStatus(WatermarkStatus.ACTIVE); // active again: this spell's mark never goes
            harness.processWatermarkStatus(WatermarkStatus.IDLE);
            harness.setProcessingTime(idleDelayMs);
            assertEquals(List.of("0: 0\ta", "W 5000"), output(harness));
            harness.setProcessingTime(2 * idleDelayMs - 1);
            assertEquals(List.of("0: 0\ta", "W 5000", "IDLE"), output(harness));
            process(harness, "1\tb"); // a line makes it active again
            harness.endInput();
            assertEquals(List.of("0: 0\ta", "W 5000", "IDLE", "ACTIVE", "1: 1\tb"), output(harness));
        }
    }

    @Test
    void emitsEveryPendingBundleAtTheEndOfInput() throws Exception {
        try (var harness = harnessOf(new ShardBundler(100, NEVER_MS))) {
            process(harness, "1\ta", "0\tb", "1\tc");
            harness.endInput();
            assertEquals(List.of("0: 0\tb", "1: 1\ta\n1\tc"), bundles(harness));
        }
    }

    @Test
    void withoutDelayEveryLineIsABundle() throws Exception {
        try (var harness = harnessOf(new ShardBundler(100, 0))) {
            process(harness, "1\ta", "1\tb");
            assertEquals(List.of("1: 1\ta", "1: 1\tb"), bundles(harness));
        }
    }

    @Test
    void aLineWithoutAShardNumberIsABug() throws Exception {
        try (var harness = harnessOf(new ShardBundler(100, NEVER_MS))) {
            assertThrows(IllegalArgumentException.class, () -> process(harness, "x\tlabel"));
            assertThrows(IllegalArgumentException.class, () -> process(harness, "12"));
            assertThrows(IllegalArgumentException.class, () -> process(harness, "\tlabel"));
            assertThrows(IllegalArgumentException.class, () -> process(harness, "99999999999\tlabel"));
        }
    }
}
