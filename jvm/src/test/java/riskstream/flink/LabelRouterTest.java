package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;

import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.Metric;
import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.runtime.state.KeyedStateBackend;
import org.apache.flink.runtime.state.VoidNamespace;
import org.apache.flink.state.rocksdb.EmbeddedRocksDBStateBackend;
import org.apache.flink.runtime.metrics.groups.AbstractMetricGroup;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.util.OperatorSnapshotUtil;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.KeyedTwoInputStreamOperatorTestHarness;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * LabelRouter on Flink's operator test harness: labels reach their transaction's shard with the
 * labels seen before them, wait for a route that comes later, become unknown exactly when the
 * watermark reaches their wait, routes are forgotten on time, unreadable lines go to the side output,
 * a restore changes nothing, and a version-1 state restores. Every expected line is worked out by hand from the line formats.
 */
class LabelRouterTest {

    private static final long REMEMBER_MS = 10_000L;
    private static final long UNKNOWN_WAIT_MS = 2_000L;
    // Five shards: a txn_id's hash modulo 5 differs from its floorMod when the hash is negative.
    private static final int SHARDS = 5;
    private static final String METRICS_GROUP = "riskstream";

    private static KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> harness() throws Exception {
        return new KeyedTwoInputStreamOperatorTestHarness<>(
                LabelRouter.operator(REMEMBER_MS, UNKNOWN_WAIT_MS, SHARDS, METRICS_GROUP),
                LabelRouter.txnIdKey(), LabelRouter.txnIdKey(), Types.STRING);
    }

    private static KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> opened() throws Exception {
        var harness = harness();
        harness.open();
        return harness;
    }

    private static byte[] utf8(String line) {
        return line.getBytes(StandardCharsets.UTF_8);
    }

    private static void route(KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> harness,
                              String txnId, int shard, long eventTime, int inlineLabel) throws Exception {
        harness.processElement1(utf8(txnId + "\t" + shard + "\t" + eventTime + "\t" + inlineLabel + "\t@" + txnId), 0L);
    }

    private static void label(KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> harness,
                              String txnId, int isFraud, long labelTime, String source) throws Exception {
        harness.processElement2(utf8(txnId + "\t" + isFraud + "\t" + labelTime + "\t" + source), 0L);
    }

    private static void watermark(KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> harness,
                                  long time) throws Exception {
        harness.processBothWatermarks(new Watermark(time));
    }

    /** The lines emitted so far, decoded from UTF-8. */
    private static List<String> lines(KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> harness) {
        return harness.extractOutputValues().stream().map(bytes -> new String(bytes, StandardCharsets.UTF_8))
                .collect(Collectors.toList());
    }

    private static List<String> unreadable(KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> harness) {
        var records = harness.getSideOutput(LabelRouter.UNREADABLE);
        List<String> lines = new ArrayList<>();
        if (records != null) {
            for (StreamRecord<byte[]> record : records) {
                lines.add(new String(record.getValue(), StandardCharsets.UTF_8));
            }
        }
        return lines;
    }

    /**
     * A counter's value. The harness's metric groups report to no registry, and Flink offers no way
     * to list a group's metrics, so this reads the group's own map of them.
     */
    @SuppressWarnings("unchecked")
    private static long counter(KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> harness,
                                String name) throws Exception {
        // addGroup returns the existing group of that name: the one the operator's counters are in.
        Object group = harness.getOperator().getMetricGroup().addGroup(METRICS_GROUP);
        Field metrics = AbstractMetricGroup.class.getDeclaredField("metrics");
        metrics.setAccessible(true);
        Metric metric = ((Map<String, Metric>) metrics.get(group)).get(name);
        assertTrue(metric instanceof Counter, "no counter " + name);
        return ((Counter) metric).getCount();
    }

    @Test
    void aLabelAfterItsRouteGoesToTheRoutesShardWithTheLabelsBeforeIt() throws Exception {
        try (var harness = opened()) {
            // t1 carried fraud = 1 when scored at 1 000: the first entry of its history.
            route(harness, "t1", 2, 1_000, 1);
            label(harness, "t1", 1, 5_000, "bank");
            label(harness, "t1", 1, 6_000, ""); // the same label again, no source
            label(harness, "t1", 0, 7_000, "chargeback"); // contradicting
            route(harness, "t2", 0, 1_500, -1); // no inline label
            label(harness, "t2", 0, 3_000, "manual");
            assertEquals(List.of(
                    "2\tlabel\tt1\t1000\t1\t5000\tbank\t1:1000\t@t1",
                    "2\tlabel\tt1\t1000\t1\t6000\t\t1:1000,1:5000\t@t1",
                    "2\tlabel\tt1\t1000\t0\t7000\tchargeback\t1:1000,1:5000,1:6000\t@t1",
                    "0\tlabel\tt2\t1500\t0\t3000\tmanual\t\t@t2"), lines(harness));
            assertEquals(List.of(), unreadable(harness));
        }
    }

    @Test
    void aTxnIdAndSourceOutsideAsciiPassUnchanged() throws Exception {
        try (var harness = opened()) {
            route(harness, "caf\u00e9-\ud83d\ude00", 4, 1_000, 0);
            label(harness, "caf\u00e9-\ud83d\ude00", 1, 2_000, "r\u00e9clamation");
            assertEquals(List.of("4\tlabel\tcaf\u00e9-\ud83d\ude00\t1000\t1\t2000\tr\u00e9clamation\t0:1000\t@caf\u00e9-\ud83d\ude00"),
                    lines(harness));
        }
    }

    @Test
    void labelsBeforeTheRouteAreHeldThenForwardedInArrivalOrderWhenItComes() throws Exception {
        try (var harness = opened()) {
            label(harness, "t1", 1, 5_000, "a");
            label(harness, "t1", 0, 4_000, "b"); // arrives second though its label_time is earlier
            watermark(harness, 5_999); // neither wait (7 000 and 6 000) is over
            assertEquals(List.of(), lines(harness));
            route(harness, "t1", 3, 1_000, 0);
            assertEquals(List.of(
                    "3\tlabel\tt1\t1000\t1\t5000\ta\t0:1000\t@t1",
                    "3\tlabel\tt1\t1000\t0\t4000\tb\t0:1000,1:5000\t@t1"), lines(harness));
            label(harness, "t1", 1, 9_000, "c");
            // The held labels' timers (6 000, 7 000) fire with the route known: nothing more.
            watermark(harness, 9_000);
            assertEquals(List.of(
                    "3\tlabel\tt1\t1000\t1\t5000\ta\t0:1000\t@t1",
                    "3\tlabel\tt1\t1000\t0\t4000\tb\t0:1000,1:5000\t@t1",
                    "3\tlabel\tt1\t1000\t1\t9000\tc\t0:1000,1:5000,0:4000\t@t1"), lines(harness));
            assertEquals(0, counter(harness, "labels_held_unknown"));
        }
    }

    @Test
    void aLabelWithoutRouteIsUnknownExactlyWhenTheWatermarkReachesItsWait() throws Exception {
        // "orphan".hashCode() = -1 008 410 488 = 5 * -201 682 098 + 2: floorMod 2 (the remainder, %, is -3).
        assertEquals(-1_008_410_488, "orphan".hashCode());
        try (var harness = opened()) {
            label(harness, "orphan", 1, 5_000, "bank");
            label(harness, "orphan", 0, 5_500, "");
            harness.processWatermark1(new Watermark(20_000)); // the labels' input still at its start:
            assertEquals(List.of(), lines(harness), "the operator's watermark is the lower of the two");
            harness.processWatermark2(new Watermark(6_999));
            assertEquals(List.of(), lines(harness), "not one ms before 5 000 + 2 000");
            harness.processWatermark2(new Watermark(7_000));
            assertEquals(List.of("2\tunknown\torphan\t-1\t1\t5000\tbank\t\t"), lines(harness));
            harness.processWatermark2(new Watermark(7_500));
            assertEquals(List.of("2\tunknown\torphan\t-1\t1\t5000\tbank\t\t", "2\tunknown\torphan\t-1\t0\t5500\t\t\t"),
                    lines(harness));
            assertEquals(2, counter(harness, "labels_held_unknown"));
        }
    }

    @Test
    void heldLabelsAreUnknownAsTheirWaitsEndAndInArrivalOrderWhenTheyEndTogether() throws Exception {
        try (var harness = opened()) {
            // "ab".hashCode() = 97 * 31 + 98 = 3 105: shard 0.
            label(harness, "ab", 1, 5_000, "first");
            label(harness, "ab", 0, 5_000, "second");
            label(harness, "ab", 1, 4_000, "third"); // came last, but its wait ends first, at 6 000
            watermark(harness, 10_000); // past both waits at once
            assertEquals(List.of(
                    "0\tunknown\tab\t-1\t1\t4000\tthird\t\t",
                    "0\tunknown\tab\t-1\t1\t5000\tfirst\t\t",
                    "0\tunknown\tab\t-1\t0\t5000\tsecond\t\t"), lines(harness));
            assertEquals(0, harness.numKeyedStateEntries());
        }
    }

    @Test
    void aRouteIsForgottenAtItsEventTimePlusRememberMs() throws Exception {
        try (var harness = opened()) {
            route(harness, "a", 1, 1_000, -1); // never labelled
            route(harness, "b", 2, 1_000, 0); // labelled inline
            route(harness, "c", 3, 1_000, -1);
            label(harness, "c", 1, 3_000, "bank"); // labelled by the stream
            watermark(harness, 10_999);
            assertEquals(0, counter(harness, "unlabelled_transactions"));
            label(harness, "a", 1, 10_500, "bank"); // still routed, one ms before its removal
            watermark(harness, 11_000);
            // Now a was labelled too: none of the three counts as unlabelled.
            assertEquals(0, counter(harness, "unlabelled_transactions"));
            route(harness, "d", 4, 2_000, -1);
            watermark(harness, 12_000);
            assertEquals(1, counter(harness, "unlabelled_transactions"), "d, without any label");

            // "c".hashCode() = 99: shard 4. A label after the route was forgotten waits like any other.
            label(harness, "c", 0, 12_500, "late");
            watermark(harness, 14_499);
            assertEquals(List.of(
                    "3\tlabel\tc\t1000\t1\t3000\tbank\t\t@c",
                    "1\tlabel\ta\t1000\t1\t10500\tbank\t\t@a"), lines(harness));
            watermark(harness, 14_500);
            assertEquals(List.of(
                    "3\tlabel\tc\t1000\t1\t3000\tbank\t\t@c",
                    "1\tlabel\ta\t1000\t1\t10500\tbank\t\t@a",
                    "4\tunknown\tc\t-1\t0\t12500\tlate\t\t"), lines(harness));
            assertEquals(1, counter(harness, "labels_held_unknown"));
            assertEquals(0, harness.numKeyedStateEntries(), "nothing left of a, b, c or d");
        }
    }

    @Test
    void aSecondRouteForATxnIdIsIgnoredAndCounted() throws Exception {
        try (var harness = opened()) {
            route(harness, "t1", 1, 1_000, -1);
            route(harness, "t1", 2, 2_000, 1);
            label(harness, "t1", 0, 3_000, "bank");
            assertEquals(List.of("1\tlabel\tt1\t1000\t0\t3000\tbank\t\t@t1"), lines(harness));
            assertEquals(1, counter(harness, "duplicate_txn_ids"));
            // Forgotten at 11 000 (the first route's time), not 12 000.
            watermark(harness, 11_000);
            label(harness, "t1", 1, 11_500, "late");
            watermark(harness, 13_500);
            // "t1".hashCode() = 116 * 31 + 49 = 3 645: shard 0.
            assertEquals(List.of("1\tlabel\tt1\t1000\t0\t3000\tbank\t\t@t1", "0\tunknown\tt1\t-1\t1\t11500\tlate\t\t"),
                    lines(harness));
        }
    }

    @Test
    void unreadableLinesGoToTheSideOutputWithTheirReason() throws Exception {
        List<String> badRoutes = List.of(
                "t1\t1\t1000", // three fields
                "t1\tx\t1000\t-1\tw", // shard not a number
                "t1\t5\t1000\t-1\tw", // shard out of [0, 5)
                "t1\t-1\t1000\t-1\tw",
                "t1\t1\tyesterday\t-1\tw",
                "t1\t1\t1000\t2\tw", // inline label neither -1, 0 nor 1
                "t1\t1\t1000\t-1\tw\textra");
        List<String> badLabels = List.of(
                "t1\t2\t1000\tbank", // is_fraud neither 0 nor 1
                "t1\t1\t10:00\tbank",
                "t1\t1\t1000",
                "t\u00e9-only-a-txn-id"); // no tab at all
        try (var harness = opened()) {
            for (String line : badRoutes) {
                harness.processElement1(utf8(line), 0L);
            }
            for (String line : badLabels) {
                harness.processElement2(utf8(line), 0L);
            }
            watermark(harness, Long.MAX_VALUE);
            assertEquals(List.of(), lines(harness), "nothing routed, held or unknown");
            List<String> unreadable = unreadable(harness);
            assertEquals(badRoutes.size() + badLabels.size(), unreadable.size());
            List<String> expectedLines = new ArrayList<>(badRoutes);
            expectedLines.addAll(badLabels);
            String[] names = {"route", "shard", "shard", "shard", "event_time", "inline_label", "route",
                              "is_fraud", "label_time", "label", "label"};
            for (int i = 0; i < unreadable.size(); i++) {
                JsonNode letter = new ObjectMapper().readTree(unreadable.get(i));
                assertEquals(1, letter.get("schema_version").asInt());
                assertEquals("label-route", letter.get("stage").asText());
                assertEquals(expectedLines.get(i), letter.get("raw").asText(), "the original line is the raw text");
                String reason = letter.get("reason").asText();
                assertTrue(reason.contains(names[i]), reason + " should name " + names[i]);
                assertFalse(reason.contains("\n"));
            }
            // The bad route of t1 left no route behind: a good one is the first.
            route(harness, "t1", 1, Long.MAX_VALUE - 5, -1);
            label(harness, "t1", 1, 1_000, "bank");
            assertEquals(List.of("1\tlabel\tt1\t" + (Long.MAX_VALUE - 5) + "\t1\t1000\tbank\t\t@t1"), lines(harness));
            assertEquals(0, counter(harness, "duplicate_txn_ids"));
        }
    }

    /**
     * One scripted run: each step a route (1, txn_id, shard, event_time, inline_label), a label (2,
     * txn_id, is_fraud, label_time, source) or a watermark of both inputs (W, time).
     */
    private static final String[][] SCRIPT = {
            {"1", "a", "2", "1000", "1"},
            {"2", "a", "0", "2000", "s1"},
            {"2", "b", "1", "2500", "s2"}, // held: b's route comes after the snapshot
            {"2", "c", "1", "3000", "s3"}, // held, never routed: unknown at 5 000
            {"1", "d", "3", "3000", "-1"}, // never labelled
            {"W", "3000"},
            // ---- snapshot here
            {"1", "b", "0", "2000", "-1"},
            {"2", "b", "1", "3500", ""},
            {"1", "e", "9", "1000", "-1"}, // unreadable: shard outside [0, 5)
            {"W", "5000"},
            {"2", "a", "1", "6000", "s4"},
            {"W", "11000"}, // a forgotten
            {"2", "a", "0", "11500", "s5"}, // held, unknown at 13 500
            {"W", "13500"}, // b (12 000) and d (13 000) forgotten, then a's label unknown
    };
    private static final int SNAPSHOT_AFTER = 6;

    private static void play(KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> harness,
                             int from, int to) throws Exception {
        for (String[] step : java.util.Arrays.asList(SCRIPT).subList(from, to)) {
            if (step[0].equals("W")) {
                watermark(harness, Long.parseLong(step[1]));
            } else if (step[0].equals("1")) {
                harness.processElement1(utf8(String.join("\t", step[1], step[2], step[3], step[4], "@" + step[1])), 0L);
            } else {
                harness.processElement2(utf8(String.join("\t", step[1], step[2], step[3], step[4])), 0L);
            }
        }
    }

    @Test
    void aRestoreMidwayEmitsWhatAnUninterruptedRunDoes() throws Exception {
        // "a".hashCode() = 97: shard 2; "c".hashCode() = 99: shard 4.
        List<String> expected = List.of(
                "2\tlabel\ta\t1000\t0\t2000\ts1\t1:1000\t@a",
                "0\tlabel\tb\t2000\t1\t2500\ts2\t\t@b",
                "0\tlabel\tb\t2000\t1\t3500\t\t1:2500\t@b",
                "4\tunknown\tc\t-1\t1\t3000\ts3\t\t",
                "2\tlabel\ta\t1000\t1\t6000\ts4\t1:1000,0:2000\t@a",
                "2\tunknown\ta\t-1\t0\t11500\ts5\t\t");
        List<String> uninterrupted;
        List<String> uninterruptedUnreadable;
        try (var harness = opened()) {
            play(harness, 0, SCRIPT.length);
            uninterrupted = lines(harness);
            uninterruptedUnreadable = unreadable(harness);
            assertEquals(1, counter(harness, "unlabelled_transactions"), "d");
        }
        assertEquals(expected, uninterrupted);
        assertEquals(1, uninterruptedUnreadable.size());

        List<String> restoredRun = new ArrayList<>();
        List<String> restoredUnreadable = new ArrayList<>();
        OperatorSubtaskState state;
        try (var harness = opened()) {
            play(harness, 0, SNAPSHOT_AFTER);
            state = harness.snapshot(1L, 1L);
            restoredRun.addAll(lines(harness));
            play(harness, SNAPSHOT_AFTER, 11); // lost with the failure, replayed below
        }
        try (var restored = harness()) {
            restored.initializeState(state);
            restored.open();
            play(restored, SNAPSHOT_AFTER, SCRIPT.length);
            restoredRun.addAll(lines(restored));
            restoredUnreadable.addAll(unreadable(restored));
            assertEquals(1, counter(restored, "unlabelled_transactions"), "d's route came back with the state");
        }
        assertEquals(uninterrupted, restoredRun);
        assertEquals(uninterruptedUnreadable, restoredUnreadable);
    }

    /**
     * The version-1 router's state (jvm/src/test/resources/label-router: three states per txn_id)
     * restores into one entry per txn_id and every route, history, held label and timer carries
     * on: the expected lines follow from that folder's table and the line formats. A checkpoint of
     * the heap into the heap; a canonical savepoint of RocksDB (conf/labels.yaml's backend) into
     * RocksDB and into the heap.
     */
    @ParameterizedTest(name = "{0} into rocksdb={1}")
    @CsvSource({"v1.snapshot,false", "v1-rocksdb-savepoint.snapshot,true", "v1-rocksdb-savepoint.snapshot,false"})
    void aVersion1StateRestoresAndCarriesOn(String fixture, boolean rocksdb) throws Exception {
        // "t6".hashCode() = 116 * 31 + 54 = 3 650: shard 0 of 5. "t1"'s second route is a duplicate.
        var snapshot = OperatorSnapshotUtil.readStateHandle(
                LabelRouterTest.class.getResource("/label-router/" + fixture).getPath());
        try (var restored = harness()) {
            if (rocksdb) {
                restored.setStateBackend(new EmbeddedRocksDBStateBackend());
            }
            restored.initializeState(snapshot);
            restored.open();
            assertEquals(Map.of("entry", 5L, "route", 0L, "history", 0L, "held-labels", 0L), stateEntries(restored),
                    "one entry for each of t1, t2, t3, t5 and t6, the old ones cleared");
            label(restored, "t1", 1, 1_600, "again");
            label(restored, "t2", 1, 2_500, "bank");
            route(restored, "t3", 4, 2_800, -1);
            label(restored, "t3", 1, 3_700, "late");
            route(restored, "t1", 3, 1_000, 0);
            watermark(restored, 6_000); // t6's held label waits until 4 000 + 2 000
            assertEquals(List.of(
                    "1\tlabel\tt1\t1000\t1\t1600\tagain\t1:1000,0:1500\t@t1",
                    "2\tlabel\tt2\t2000\t1\t2500\tbank\t\t@t2",
                    "4\tlabel\tt3\t2800\t1\t3000\tfirst\t\t@t3",
                    "4\tlabel\tt3\t2800\t0\t3500\t\t1:3000\t@t3",
                    "4\tlabel\tt3\t2800\t1\t3700\tlate\t1:3000,0:3500\t@t3",
                    "0\tunknown\tt6\t-1\t0\t4000\tsrc\t\t"), lines(restored));
            assertEquals(1, counter(restored, "duplicate_txn_ids"));
            assertEquals(1, counter(restored, "labels_held_unknown"));
            // t5 (100 + 10 000) is forgotten without a label; t1 (11 000), t2 (12 000) and t3
            // (12 800) with theirs: the version-1 timers fire on the new entries.
            watermark(restored, 10_100);
            assertEquals(1, counter(restored, "unlabelled_transactions"));
            watermark(restored, 12_800);
            assertEquals(1, counter(restored, "unlabelled_transactions"));
            assertEquals(Map.of("entry", 0L, "route", 0L, "history", 0L, "held-labels", 0L), stateEntries(restored),
                    "nothing left of the version-1 state or its moves");
        }
    }

    /** How many txn_ids each of the router's states (current and version 1) holds, on any backend. */
    private static Map<String, Long> stateEntries(KeyedTwoInputStreamOperatorTestHarness<String, byte[], byte[], byte[]> harness) {
        KeyedStateBackend<Object> backend = harness.getOperator().getKeyedStateBackend();
        Map<String, Long> entries = new java.util.HashMap<>();
        for (String state : List.of("entry", "route", "history", "held-labels")) {
            try (var keys = backend.getKeys(state, VoidNamespace.INSTANCE)) {
                entries.put(state, keys.count());
            }
        }
        return entries;
    }
}
