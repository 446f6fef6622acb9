package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.junit.jupiter.api.Test;

/** VersionFanOut: one copy of each version per shard, and no event time of its own. */
class VersionFanOutTest {

    private static List<String> described(OneInputStreamOperatorTestHarness<byte[], Tuple2<Integer, byte[]>> harness) {
        List<String> out = new ArrayList<>();
        for (Object element : harness.getOutput()) {
            if (element instanceof Watermark) {
                out.add("W " + ((Watermark) element).getTimestamp());
            } else if (element instanceof WatermarkStatus) {
                out.add(((WatermarkStatus) element).isIdle() ? "IDLE" : "ACTIVE");
            } else {
                @SuppressWarnings("unchecked")
                Tuple2<Integer, byte[]> copy = ((StreamRecord<Tuple2<Integer, byte[]>>) element).getValue();
                out.add(copy.f0 + ": " + new String(copy.f1, StandardCharsets.UTF_8));
            }
        }
        return out;
    }

    @Test
    void everyShardGetsEveryVersionAndTheOutputIsIdle() throws Exception {
        var harness = new OneInputStreamOperatorTestHarness<byte[], Tuple2<Integer, byte[]>>(new VersionFanOut(3));
        harness.open();
        harness.processElement("v1".getBytes(StandardCharsets.UTF_8), 0L);
        harness.processWatermark(new Watermark(5L));
        harness.processWatermarkStatus(WatermarkStatus.ACTIVE);
        harness.processElement("v2".getBytes(StandardCharsets.UTF_8), 0L);
        assertEquals(List.of("IDLE", "0: v1", "1: v1", "2: v1", "0: v2", "1: v2", "2: v2"),
                described(harness));
        harness.close();
    }

    @Test
    void eachSubtaskEmitsTheCopiesOfItsOwnShards() throws Exception {
        var harness = new OneInputStreamOperatorTestHarness<byte[], Tuple2<Integer, byte[]>>(
                new VersionFanOut(5), 10, 2, 1);  // max parallelism 10, 2 subtasks, the second
        harness.open();
        harness.processElement("v1".getBytes(StandardCharsets.UTF_8), 0L);
        assertEquals(List.of("IDLE", "1: v1", "3: v1"), described(harness));
        harness.close();
    }

    @Test
    void noShardsIsRefused() {
        assertThrows(IllegalArgumentException.class, () -> new VersionFanOut(0));
    }
}
