package riskstream.flink;

import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.operators.co.KeyedCoProcessOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.util.KeyedTwoInputStreamOperatorTestHarness;
import org.apache.flink.streaming.util.OperatorSnapshotUtil;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledIfSystemProperty;

/**
 * Writes jvm/src/test/resources/label-router/v1.snapshot: LabelRouter's keyed state and timers as
 * the version-1 router (three states per txn_id: route, history, held-labels) kept them, for
 * LabelRouterTest's restore of it. Run once, at the commit that still had that router:
 * {@code mvn test -Dtest=LabelRouterFixtureWriter -Driskstream.writeFixture=<path>}.
 */
class LabelRouterFixtureWriter {

    private static byte[] utf8(String line) {
        return line.getBytes(StandardCharsets.UTF_8);
    }

    @Test
    @EnabledIfSystemProperty(named = "riskstream.writeFixture", matches = ".+")
    void writeVersion1Snapshot() throws Exception {
        try (var harness = new KeyedTwoInputStreamOperatorTestHarness<>(
                new KeyedCoProcessOperator<>(new LabelRouter(10_000L, 2_000L, 5, "riskstream")),
                LabelRouter.txnIdKey(), LabelRouter.txnIdKey(), Types.STRING)) {
            harness.open();
            // t1: an inline label, then one from the stream: history "1:1000,0:1500".
            harness.processElement1(utf8("t1\t1\t1000\t1\t@t1"), 0L);
            harness.processElement2(utf8("t1\t0\t1500\tbank"), 0L);
            // t2: a route, no label yet.
            harness.processElement1(utf8("t2\t2\t2000\t-1\t@t2"), 0L);
            // t3: two labels held for a route still to come (waits end at 5 000 and 5 500).
            harness.processElement2(utf8("t3\t1\t3000\tfirst"), 0L);
            harness.processElement2(utf8("t3\t0\t3500\t"), 0L);
            // t5: never labelled (forgotten at 10 100).
            harness.processElement1(utf8("t5\t0\t100\t-1\t@t5"), 0L);
            // t6: a held label whose route never comes (unknown at 6 000).
            harness.processElement2(utf8("t6\t0\t4000\tsrc"), 0L);
            harness.processBothWatermarks(new Watermark(900));
            OperatorSnapshotUtil.writeStateHandle(harness.snapshot(1L, 1L), System.getProperty("riskstream.writeFixture"));
        }
    }
}
