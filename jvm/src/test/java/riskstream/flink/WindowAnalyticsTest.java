package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.stream.Collectors;

import org.apache.flink.api.common.functions.util.ListCollector;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.operators.KeyedProcessOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.KeyedOneInputStreamOperatorTestHarness;
import org.apache.flink.streaming.util.OperatorSnapshotUtil;
import org.junit.jupiter.api.Test;

/**
 * WindowAnalytics: a window's figures (worked out by hand here), emitted once when the watermark
 * reaches its end plus the allowed lateness, records counted only in windows they were not late
 * for, late lines for windows emitted before a record came, and a restore that changes nothing.
 * The job's output against the plain-Python reference is tests/integration/test_analytics.py's.
 */
class WindowAnalyticsTest {

    private static final ObjectMapper JSON = new ObjectMapper();
    private static final String[] GROUP_BY = {"merchant_category", "country"};
    /** The watermark of a record the scoring operator did not find late: it is not in the header. */
    private static final long NOT_LATE = Long.MIN_VALUE;

    /**
     * The operators as the job wires them: each scored batch split by group ({@link GroupSplit}),
     * the sub-batches keyed by group into {@link WindowAnalytics} (one harness holds every key).
     * With {@code unpartitioned}, the version-1 state ahead of it ({@link UnpartitionedAnalyticsState}),
     * whose output goes in before each watermark goes on, as in the job.
     */
    static final class Pipeline implements AutoCloseable {
        final KeyedOneInputStreamOperatorTestHarness<String, byte[], byte[]> windows;
        final KeyedOneInputStreamOperatorTestHarness<Integer, byte[], byte[]> unpartitioned;
        private final GroupSplit split;
        private int unpartitionedSent;

        Pipeline(long[] sizes, long[] slides, long lateness, boolean keyed, boolean withUnpartitioned) throws Exception {
            String[] names = new String[sizes.length];
            for (int i = 0; i < sizes.length; i++) {
                names[i] = sizes[i] == slides[i] ? "tumbling-" + sizes[i] + "ms" : "sliding-" + sizes[i] + "ms-" + slides[i] + "ms";
            }
            windows = new KeyedOneInputStreamOperatorTestHarness<>(
                    new KeyedProcessOperator<>(new WindowAnalytics(sizes, slides, names, GROUP_BY, lateness, 1e-15, keyed, "riskstream")),
                    GroupSplit.byGroup(), Types.STRING);
            unpartitioned = withUnpartitioned ? new KeyedOneInputStreamOperatorTestHarness<>(
                    new KeyedProcessOperator<>(new UnpartitionedAnalyticsState(GROUP_BY)),
                    UnpartitionedAnalyticsState.oneKey(), Types.INT) : null;
            split = new GroupSplit(GROUP_BY, keyed);
        }

        void open() throws Exception {
            windows.open();
            if (unpartitioned != null) {
                unpartitioned.open();
            }
        }

        void processElement(byte[] batch, long timestamp) throws Exception {
            List<byte[]> subBatches = new ArrayList<>();
            split.flatMap(batch, new ListCollector<>(subBatches));
            for (byte[] subBatch : subBatches) {
                windows.processElement(subBatch, timestamp);
            }
        }

        void processElement(StreamRecord<byte[]> record) throws Exception {
            processElement(record.getValue(), record.getTimestamp());
        }

        void processWatermark(Watermark watermark) throws Exception {
            if (unpartitioned != null) {
                unpartitioned.processWatermark(watermark);
                List<byte[]> handedOn = unpartitioned.extractOutputValues();
                for (byte[] subBatch : handedOn.subList(unpartitionedSent, handedOn.size())) {
                    windows.processElement(subBatch, 0L);
                }
                unpartitionedSent = handedOn.size();
            }
            windows.processWatermark(watermark);
        }

        List<byte[]> extractOutputValues() {
            return windows.extractOutputValues();
        }

        @Override
        public void close() throws Exception {
            windows.close();
            if (unpartitioned != null) {
                unpartitioned.close();
            }
        }
    }

    static Pipeline harness(long[] sizes, long[] slides, long lateness, boolean keyed) throws Exception {
        return new Pipeline(sizes, slides, lateness, keyed, false);
    }

    private static Pipeline tumbling10s() throws Exception {
        return harness(new long[] {10_000}, new long[] {10_000}, 0, false);
    }

    /** One scored record: event time, its effective watermark, score, label (-1: none), amount, currency, account, category, country. */
    private static final class Rec {
        final long eventTime;
        final long watermark;
        final double score;
        final int label;
        final double amount;
        final String currency;
        final String account;
        final String category;
        final String country;

        Rec(long eventTime, long watermark, double score, int label, double amount, String currency, String account,
            String category, String country) {
            this.eventTime = eventTime;
            this.watermark = watermark;
            this.score = score;
            this.label = label;
            this.amount = amount;
            this.currency = currency;
            this.account = account;
            this.category = category;
            this.country = country;
        }
    }

    private static Rec rec(long eventTime, long watermark, double score, int label, double amount, String currency,
                           String account) {
        return new Rec(eventTime, watermark, score, label, amount, currency, account, "grocery", "DE");
    }

    /**
     * A scoring operator's output bundle with analytics on: the header (the records whose effective
     * watermark is given, i.e. not Long.MIN_VALUE, as late ones), then a score line per record.
     */
    private static byte[] batch(Rec... records) throws Exception {
        return batch(false, records);
    }

    /** {@link #batch}, each line after {@code <model key>\t} when {@code keyed} (Kafka output). */
    private static byte[] batch(boolean keyed, Rec... records) throws Exception {
        List<Integer> late = new ArrayList<>();
        StringBuilder lines = new StringBuilder();
        for (int i = 0; i < records.length; i++) {
            Rec r = records[i];
            if (r.watermark != Long.MIN_VALUE) {
                late.add(i);
            }
            var line = JSON.createObjectNode();
            line.put("schema_version", 1).put("txn_id", "t" + r.eventTime + "-" + r.account).put("model_key", r.category)
                    .put("score", r.score);
            if (r.label < 0) {
                line.putNull("label");
            } else {
                line.put("label", r.label);
            }
            line.put("event_time", r.eventTime).put("model_updates", 3);
            line.putArray("reasons").addObject().put("feature", "country=" + r.country).put("contribution", 0.1);
            line.put("scored_at", 1L).put("merchant_category", r.category).put("country", r.country).put("channel", "web")
                    .put("amount", r.amount).put("currency", r.currency).put("account", r.account);
            lines.append(i > 0 ? "\n" : "").append(keyed ? "{odd key " + r.category + "\t" : "")
                    .append(JSON.writeValueAsString(line));
        }
        byte[] body = lines.toString().getBytes(StandardCharsets.UTF_8);
        ByteBuffer bundle = ByteBuffer.allocate(AnalyticsHeader.length(late.size()) + body.length)
                .order(ByteOrder.LITTLE_ENDIAN);
        bundle.putInt(late.size());
        for (int row : late) {
            bundle.putInt(row);
        }
        for (int row : late) {
            bundle.putLong(records[row].watermark);
        }
        return bundle.put(body).array();
    }

    private static List<JsonNode> lines(List<byte[]> bundles) throws Exception {
        List<JsonNode> lines = new ArrayList<>();
        for (byte[] bundle : bundles) {
            for (String line : new String(bundle, StandardCharsets.UTF_8).split("\n")) {
                lines.add(JSON.readTree(line));
            }
        }
        return lines;
    }

    static List<JsonNode> windows(Pipeline harness)
            throws Exception {
        return lines(harness.extractOutputValues());
    }

    private static List<JsonNode> late(Pipeline harness)
            throws Exception {
        var output = harness.windows.getSideOutput(WindowAnalytics.LATE);
        List<byte[]> bundles = new ArrayList<>();
        if (output != null) {
            for (StreamRecord<byte[]> record : output) {
                bundles.add(record.getValue());
            }
        }
        return lines(bundles);
    }

    @Test
    void aWindowsFiguresAreItsRecords() throws Exception {
        try (var harness = tumbling10s()) {
            harness.open();
            harness.processElement(batch(
                    rec(1_000, NOT_LATE, 0.2, 0, 10.0, "EUR", "a"),
                    rec(2_000, NOT_LATE, 0.8, 1, 20.0, "EUR", "b"),
                    rec(3_000, NOT_LATE, 0.8, 0, 5.0, "USD", "a"),
                    rec(4_000, NOT_LATE, 0.5, -1, 1.0, "EUR", "c"),
                    rec(12_000, NOT_LATE, 0.9, 1, 7.0, "EUR", "d")), 0L); // the next window
            harness.processWatermark(new Watermark(9_999)); // the window's due time, 10,000, less Flink's 1 ms
            List<JsonNode> lines = windows(harness);
            assertEquals(2, lines.size(), "one line per group field");
            JsonNode category = lines.get(1).get("group_by").asText().equals("merchant_category") ? lines.get(1) : lines.get(0);
            assertEquals("tumbling-10000ms", category.get("window").asText());
            assertEquals(0, category.get("window_start").asLong());
            assertEquals(10_000, category.get("window_end").asLong());
            assertEquals("grocery", category.get("group").asText());
            assertEquals(1, category.get("schema_version").asInt());
            assertEquals(4, category.get("transactions").asInt());
            assertEquals(3, category.get("labelled_transactions").asInt());
            assertEquals(1, category.get("fraud_count").asInt());
            assertEquals(1.0 / 3, category.get("fraud_rate").asDouble(), 1e-12);
            assertEquals(31.0, category.at("/amount/EUR/sum").asDouble(), 1e-12);
            assertEquals(31.0 / 3, category.at("/amount/EUR/mean").asDouble(), 1e-12);
            assertEquals(20.0, category.at("/amount/EUR/max").asDouble(), 1e-12);
            assertEquals(5.0, category.at("/amount/USD/mean").asDouble(), 1e-12);
            assertEquals(3, category.get("distinct_accounts").asInt());
            assertEquals((0.2 + 0.8 + 0.8 + 0.5) / 4, category.get("mean_score").asDouble(), 1e-12);
            assertEquals(-(Math.log(0.8) + Math.log(0.2) + Math.log(0.8)) / 3, category.get("log_loss").asDouble(), 1e-12);
            // The fraud (0.8) outranks the 0.2 and ties the other 0.8 (half): (1 + 0.5) / 2.
            assertEquals(0.75, category.get("roc_auc").asDouble(), 1e-12);
            JsonNode country = lines.get(0) == category ? lines.get(1) : lines.get(0);
            assertEquals("DE", country.get("group").asText());
            assertEquals(4, country.get("transactions").asInt());
        }
    }

    @Test
    void aWindowWithOneClassOrNoLabelsHasNullRates() throws Exception {
        try (var harness = tumbling10s()) {
            harness.open();
            harness.processElement(batch(rec(1_000, NOT_LATE, 0.3, -1, 1.0, "EUR", "a")), 0L);
            harness.processElement(batch(rec(11_000, NOT_LATE, 0.3, 0, 1.0, "EUR", "a")), 0L);
            harness.processWatermark(new Watermark(19_999));
            List<JsonNode> lines = windows(harness);
            assertEquals(4, lines.size());
            for (JsonNode line : lines) {
                assertTrue(line.get("roc_auc").isNull());
                if (line.get("window_start").asLong() == 0) {
                    assertTrue(line.get("fraud_rate").isNull() && line.get("log_loss").isNull());
                } else {
                    assertEquals(0.0, line.get("fraud_rate").asDouble());
                }
            }
        }
    }

    @Test
    void aWindowIsEmittedOnceWhenTheWatermarkReachesItsEndPlusTheLateness() throws Exception {
        try (var harness = harness(new long[] {10_000}, new long[] {10_000}, 2_000, false)) {
            harness.open();
            harness.processElement(batch(rec(1_000, NOT_LATE, 0.5, 1, 1.0, "EUR", "a")), 0L);
            harness.processWatermark(new Watermark(11_998));
            assertEquals(0, windows(harness).size(), "not before 12,000");
            harness.processWatermark(new Watermark(11_999));
            assertEquals(2, windows(harness).size());
            harness.processElement(batch(rec(15_000, 12_000, 0.5, 1, 1.0, "EUR", "a")), 0L);
            harness.processWatermark(new Watermark(40_000));
            List<Long> starts = windows(harness).stream().map(line -> line.get("window_start").asLong())
                    .collect(Collectors.toList());
            assertEquals(List.of(0L, 0L, 10_000L, 10_000L), starts, "each window once");
        }
    }

    @Test
    void aRecordCountsOnlyInTheSlidingWindowsItWasNotLateFor() throws Exception {
        // Windows of 10 s every 5 s: a record at 12,000 is in [5,000, 15,000) and [10,000, 20,000);
        // its own watermark, 16,000, passed the first one's end: it counts only in the second.
        try (var harness = harness(new long[] {10_000}, new long[] {5_000}, 0, false)) {
            harness.open();
            harness.processElement(batch(rec(12_000, 16_000, 0.5, 1, 1.0, "EUR", "a"),
                    rec(13_000, NOT_LATE, 0.5, 0, 1.0, "EUR", "b")), 0L);
            harness.processWatermark(new Watermark(Long.MAX_VALUE));
            List<JsonNode> category = windows(harness).stream()
                    .filter(line -> line.get("group_by").asText().equals("merchant_category")).collect(Collectors.toList());
            assertEquals(List.of(5_000L, 10_000L), category.stream().map(line -> line.get("window_start").asLong())
                    .collect(Collectors.toList()));
            assertEquals(List.of(1, 2), category.stream().map(line -> line.get("transactions").asInt())
                    .collect(Collectors.toList()));
            assertEquals("sliding-10000ms-5000ms", category.get(0).get("window").asText());
        }
    }

    @Test
    void aRecordForAWindowAlreadyEmittedIsWrittenAsLate() throws Exception {
        try (var harness = tumbling10s()) {
            harness.open();
            harness.processElement(batch(rec(5_000, 5_000, 0.5, -1, 1.0, "EUR", "a"),
                    rec(25_000, 25_000, 0.5, -1, 1.0, "EUR", "a")), 0L);
            harness.processWatermark(new Watermark(24_999));
            assertEquals(List.of(0L, 0L), windows(harness).stream().map(line -> line.get("window_start").asLong())
                    .collect(Collectors.toList()));
            harness.processElement(batch(rec(6_000, 6_000, 0.5, -1, 1.0, "EUR", "b")), 0L);
            List<JsonNode> late = late(harness);
            assertEquals(1, late.size());
            assertEquals("t6000-b", late.get(0).get("txn_id").asText());
            assertTrue(late.get(0).get("model_key").isNull());
            assertEquals(25_000, late.get(0).get("watermark").asLong());
            assertEquals(JSON.readTree("[{\"window_start\":0,\"window_end\":10000,\"late_by_ms\":15000}]"),
                    late.get(0).get("missed"));
            harness.processWatermark(new Watermark(Long.MAX_VALUE));
            assertEquals(4, windows(harness).size(), "the late record opens no window again");
        }
    }

    @Test
    void keyedOutputPrefixesEachLineWithItsGroup() throws Exception {
        try (var harness = harness(new long[] {10_000}, new long[] {10_000}, 0, true)) {
            harness.open();
            // Keyed input too: score lines after "<model key>\t" (a key may hold a brace).
            harness.processElement(batch(true, rec(1_000, NOT_LATE, 0.5, 1, 1.0, "EUR", "a"),
                    rec(2_000, NOT_LATE, 0.5, 0, 3.0, "EUR", "b")), 0L);
            harness.processWatermark(new Watermark(Long.MAX_VALUE));
            List<String> keyedLines = harness.extractOutputValues().stream()
                    .flatMap(bundle -> Arrays.stream(new String(bundle, StandardCharsets.UTF_8).split("\n")))
                    .sorted().collect(Collectors.toList());
            List<String> keys = keyedLines.stream().map(line -> line.substring(0, line.indexOf('\t')))
                    .collect(Collectors.toList());
            assertEquals(List.of("country=DE", "merchant_category=grocery"), keys);
            JsonNode first = JSON.readTree(keyedLines.get(0).substring(keys.get(0).length() + 1));
            assertEquals(2, first.get("transactions").asInt());
            assertEquals(4.0, first.at("/amount/EUR/sum").asDouble());
        }
    }

    static List<byte[]> randomBatches(long seed) throws Exception {
        Random random = new Random(seed);
        List<byte[]> batches = new ArrayList<>();
        long largest = 0;
        for (int b = 0; b < 40; b++) {
            Rec[] records = new Rec[1 + random.nextInt(8)];
            for (int i = 0; i < records.length; i++) {
                long eventTime = b * 1_500L + random.nextInt(6_000);
                largest = Math.max(largest, eventTime);
                long watermark = largest - 2_000; // a record at or after it is late for no window
                records[i] = new Rec(eventTime, eventTime < watermark ? watermark : NOT_LATE, random.nextDouble(), random.nextInt(3) - 1,
                        1 + random.nextInt(100), random.nextBoolean() ? "EUR" : "USD", "a" + random.nextInt(9),
                        "c" + random.nextInt(3), random.nextBoolean() ? "DE" : "FR");
            }
            batches.add(batch(records));
        }
        return batches;
    }

    /** Feeds the batches with a watermark after each (largest event time so far less 2,000, less Flink's 1 ms). */
    static long feed(Pipeline harness, List<byte[]> batches,
                             int from, int to, long watermark) throws Exception {
        for (int b = from; b < to; b++) {
            byte[] batch = batches.get(b);
            harness.processElement(new StreamRecord<>(batch, 0L));
            for (long eventTime : ScoredColumns.ofScoredBatch(batch, GROUP_BY, false).eventTimes) {
                watermark = Math.max(watermark, eventTime - 2_000 - 1);
            }
            harness.processWatermark(new Watermark(watermark));
        }
        return watermark;
    }

    @Test
    void aRestoredOperatorEmitsWhatAnUninterruptedOneDoes() throws Exception {
        List<byte[]> batches = randomBatches(7);
        long[] sizes = {6_000, 10_000};
        long[] slides = {6_000, 2_500};
        List<String> uninterrupted;
        try (var harness = harness(sizes, slides, 500, false)) {
            harness.open();
            feed(harness, batches, 0, batches.size(), Long.MIN_VALUE);
            harness.processWatermark(new Watermark(Long.MAX_VALUE));
            uninterrupted = windows(harness).stream().map(JsonNode::toString).collect(Collectors.toList());
        }
        List<String> restoredRun = new ArrayList<>();
        OperatorSubtaskState state;
        long watermark;
        try (var harness = harness(sizes, slides, 500, false)) {
            harness.open();
            watermark = feed(harness, batches, 0, 17, Long.MIN_VALUE);
            state = harness.windows.snapshot(1L, 1L);
            windows(harness).forEach(line -> restoredRun.add(line.toString()));
            feed(harness, batches, 17, 25, watermark); // lost with the failure, replayed below
        }
        try (var restored = harness(sizes, slides, 500, false)) {
            restored.windows.initializeState(state);
            restored.open();
            feed(restored, batches, 17, batches.size(), watermark);
            restored.processWatermark(new Watermark(Long.MAX_VALUE));
            windows(restored).forEach(line -> restoredRun.add(line.toString()));
        }
        assertTrue(uninterrupted.size() > 40, "enough windows to mean something: " + uninterrupted.size());
        // Groups whose windows are due at one watermark may come in another order.
        Collections.sort(uninterrupted);
        Collections.sort(restoredRun);
        assertEquals(uninterrupted, restoredRun);
    }

    private static List<String> resourceLines(String name) throws Exception {
        try (var stream = WindowAnalyticsTest.class.getResourceAsStream("/window-analytics/" + name)) {
            return new String(stream.readAllBytes(), StandardCharsets.UTF_8).lines().collect(Collectors.toList());
        }
    }

    /**
     * A savepoint of the single-key version (jvm/src/test/resources/window-analytics/v1.snapshot,
     * written by that version after 17 of the 40 random batches: WindowAnalyticsFixtureWriter at
     * ea03382) restores into the partitioned operators: with the lines that version had emitted
     * before the snapshot, the rest of the batches give exactly the lines that version gave over
     * all 40 uninterrupted.
     */
    @Test
    void aSnapshotOfTheSingleKeyVersionRestoresAndEmitsWhatItWould() throws Exception {
        long[] sizes = {6_000, 10_000};
        long[] slides = {6_000, 2_500};
        List<byte[]> batches = randomBatches(7);
        long watermark = Long.MIN_VALUE; // where the fixture's feed stopped, after 17 batches
        for (byte[] batch : batches.subList(0, 17)) {
            for (long eventTime : ScoredColumns.ofScoredBatch(batch, GROUP_BY, false).eventTimes) {
                watermark = Math.max(watermark, eventTime - 2_000 - 1);
            }
        }
        List<String> lines = new ArrayList<>(resourceLines("v1-emitted-before-snapshot.jsonl"));
        int before = lines.size();
        try (var restored = new Pipeline(sizes, slides, 500, false, true)) {
            String snapshot = Path.of(WindowAnalyticsTest.class.getResource("/window-analytics/v1.snapshot").toURI()).toString();
            restored.unpartitioned.initializeState(OperatorSnapshotUtil.readStateHandle(snapshot));
            restored.open();
            feed(restored, batches, 17, batches.size(), watermark);
            restored.processWatermark(new Watermark(Long.MAX_VALUE));
            assertTrue(restored.unpartitioned.extractOutputValues().size() > 5, "the restored records were handed on");
            windows(restored).forEach(line -> lines.add(line.toString()));
        }
        List<String> uninterrupted = resourceLines("v1-uninterrupted.jsonl");
        assertTrue(before > 20 && uninterrupted.size() > before + 40, before + " of " + uninterrupted.size());
        assertSameWindows(uninterrupted, lines);
    }

    /**
     * The same window lines, each once, with the same figures; numbers equal to 1e-12 (relative):
     * a group's records that came from the restored state are added to its figures after the ones
     * that reached the group first, and a sum in another order may differ in its last bits.
     */
    private static void assertSameWindows(List<String> expected, List<String> actual) throws Exception {
        Map<String, JsonNode> expectedByWindow = byWindow(expected);
        Map<String, JsonNode> actualByWindow = byWindow(actual);
        assertEquals(expectedByWindow.keySet(), actualByWindow.keySet());
        for (Map.Entry<String, JsonNode> window : expectedByWindow.entrySet()) {
            assertClose(window.getValue(), actualByWindow.get(window.getKey()), window.getKey());
        }
    }

    private static TreeSet<String> fieldNames(JsonNode node) {
        TreeSet<String> names = new TreeSet<>();
        node.fieldNames().forEachRemaining(names::add);
        return names;
    }

    private static Map<String, JsonNode> byWindow(List<String> lines) throws Exception {
        Map<String, JsonNode> windows = new TreeMap<>();
        for (String line : lines) {
            JsonNode node = JSON.readTree(line);
            String window = node.get("window").asText() + " " + node.get("window_start") + " " + node.get("group_by").asText()
                    + "=" + node.get("group").asText();
            assertTrue(windows.put(window, node) == null, "emitted twice: " + window);
        }
        return windows;
    }

    private static void assertClose(JsonNode expected, JsonNode actual, String where) {
        if (expected.isFloatingPointNumber() && actual.isNumber()) {
            assertEquals(expected.asDouble(), actual.asDouble(), 1e-12 * Math.max(1, Math.abs(expected.asDouble())), where);
        } else if (expected.isObject()) {
            assertEquals(fieldNames(expected), fieldNames(actual), where);
            expected.fieldNames().forEachRemaining(field -> assertClose(expected.get(field), actual.get(field), where + "." + field));
        } else {
            assertEquals(expected, actual, where);
        }
    }
}
