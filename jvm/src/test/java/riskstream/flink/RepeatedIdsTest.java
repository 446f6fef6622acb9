package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.operators.KeyedProcessOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.KeyedOneInputStreamOperatorTestHarness;
import org.apache.flink.util.Collector;
import org.junit.jupiter.api.Test;

/**
 * What RepeatedIds reports and for how long it remembers, on Flink's operator test harness: the
 * seen lines are split by bucket as the job splits them (RepeatedIds.byBucket), then processed keyed
 * by bucket.
 */
class RepeatedIdsTest {
    private static final long HORIZON_MS = 80_000L;
    private static final int BUCKETS = 7;
    private static final ObjectMapper JSON = new ObjectMapper();

    private static KeyedOneInputStreamOperatorTestHarness<Integer, Tuple2<Integer, byte[]>, byte[]> opened(
            OperatorSubtaskState restored) throws Exception {
        var harness = new KeyedOneInputStreamOperatorTestHarness<>(
                new KeyedProcessOperator<>(new RepeatedIds(HORIZON_MS, false, "riskstream")), RepeatedIds.bucket(),
                Types.INT);
        if (restored != null) {
            harness.initializeState(restored);
        }
        harness.open();
        return harness;
    }

    /** A bundle of seen lines "txn_id model_key event_time source", split by bucket, processed. */
    private static void seen(KeyedOneInputStreamOperatorTestHarness<Integer, Tuple2<Integer, byte[]>, byte[]> harness,
                             String... lines) throws Exception {
        List<Tuple2<Integer, byte[]>> subBundles = new ArrayList<>();
        RepeatedIds.byBucket(BUCKETS).flatMap(String.join("\n", lines).getBytes(StandardCharsets.UTF_8),
                new Collector<>() {
                    @Override
                    public void collect(Tuple2<Integer, byte[]> subBundle) {
                        subBundles.add(subBundle);
                    }

                    @Override
                    public void close() {
                    }
                });
        for (Tuple2<Integer, byte[]> subBundle : subBundles) {
            harness.processElement(new StreamRecord<>(subBundle));
        }
    }

    private static List<JsonNode> reports(KeyedOneInputStreamOperatorTestHarness<Integer, Tuple2<Integer, byte[]>, byte[]> harness)
            throws Exception {
        List<JsonNode> reports = new ArrayList<>();
        for (byte[] line : harness.extractOutputValues()) {
            reports.add(JSON.readTree(line));
        }
        return reports;
    }

    @Test
    void aTxnIdUnderAnotherModelKeyIsReportedWithBothDeliveriesAndTheSameKeyIsNot() throws Exception {
        var harness = opened(null);
        seen(harness, "t1\tfuel\t1000\tfile:3:/in/a\\\\b.jsonl", "t2\tfuel\t1000\tkafka:1:17:tx",
             "t3\ttravel\t1000\tfile:5:/in.jsonl");
        seen(harness, "t1\tgrocery\t1000\tkafka:0:42:tx", "t2\tfuel\t1000\tkafka:1:18:tx");
        List<JsonNode> reports = reports(harness);
        assertEquals(1, reports.size());
        JsonNode report = reports.get(0);
        assertEquals(1, report.get("schema_version").asInt());
        assertEquals("t1", report.get("txn_id").asText());
        assertEquals("fuel", report.get("first").get("model_key").asText());
        assertEquals("/in/a\\b.jsonl", report.get("first").get("source").get("file").asText());
        assertEquals(3, report.get("first").get("source").get("line").asInt());
        assertEquals("grocery", report.get("repeat").get("model_key").asText());
        assertEquals("tx", report.get("repeat").get("source").get("topic").asText());
        assertEquals(42, report.get("repeat").get("source").get("offset").asLong());
        assertEquals(1000, report.get("repeat").get("event_time").asLong());
    }

    @Test
    void aTxnIdIsForgottenOnceTheWatermarkPassesItsEventTimePlusTheHorizonAndAcrossARestoreItIsNot() throws Exception {
        var harness = opened(null);
        seen(harness, "t1\tfuel\t1000\t", "t2\tfuel\t20000\t");
        OperatorSubtaskState snapshot = harness.snapshot(1L, 1L);
        harness.close();

        var restored = opened(snapshot);
        // Before t1's horizon ends (1000 + 80000): both still remembered after the restore.
        restored.processWatermark(new Watermark(1000 + HORIZON_MS - 1));
        seen(restored, "t1\tgrocery\t2000\t");
        assertEquals(1, reports(restored).size());
        // Past it (the sweep timer has run): t1 is forgotten, a new first record; t2 (20000 + 80000) is not yet.
        restored.processWatermark(new Watermark(1000 + HORIZON_MS + HORIZON_MS / 8));
        seen(restored, "t1\ttravel\t90000\t", "t2\ttravel\t20000\t");
        List<JsonNode> reports = reports(restored);
        assertEquals(2, reports.size());
        assertEquals("t2", reports.get(1).get("txn_id").asText());
        // The first t1 is gone: a later record of t1 under yet another key is reported against travel.
        seen(restored, "t1\tfuel\t90001\t");
        reports = reports(restored);
        assertEquals(3, reports.size());
        assertEquals("travel", reports.get(2).get("first").get("model_key").asText());
    }
}
