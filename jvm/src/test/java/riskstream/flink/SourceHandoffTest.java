package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;

import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.watermarkstatus.WatermarkStatus;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.junit.jupiter.api.Test;

/** SourceHandoff passes records on unchanged and in order, at most its ceiling a second, and never a watermark on an idle output. */
class SourceHandoffTest {

    @Test
    void passesEveryRecordUnchangedAtMostMaxRecordsPerSecondAfterABurstOfOneSecondsWorth() throws Exception {
        int perSecond = 1_000;
        int records = 2_500;
        List<String> sent = new ArrayList<>();
        try (var harness = new OneInputStreamOperatorTestHarness<>(new SourceHandoff(perSecond))) {
            harness.open();
            long started = System.nanoTime();
            for (int i = 0; i < records; i++) {
                sent.add("file:" + i + ":/a.jsonl\t{\"n\":" + i + "}");
                harness.processElement(sent.get(i), i);
            }
            double seconds = (System.nanoTime() - started) / 1e9;
            // The first second's worth passes at once, the rest at the ceiling: 1.5 s at least, less
            // the last wait it skips because it is under a millisecond.
            double fastestAllowed = (double) (records - perSecond) / perSecond - 0.002;
            assertTrue(seconds >= fastestAllowed, records + " records in " + seconds + " s, under the "
                    + fastestAllowed + " s a ceiling of " + perSecond + "/s allows");
            assertEquals(sent, harness.extractOutputValues().stream()
                    .map(line -> new String(line, StandardCharsets.UTF_8)).collect(Collectors.toList()));
        }
    }

    @Test
    void theEndOfInputAfterAnIdleSpellComesOnAnActiveOutput() throws Exception {
        try (var harness = new OneInputStreamOperatorTestHarness<>(new SourceHandoff(0))) {
            harness.open();
            harness.processElement("a", 5_000L);
            harness.processWatermark(4_000L);
            harness.processWatermarkStatus(WatermarkStatus.IDLE); // the source's idleness: passed on
            harness.processWatermark(Long.MAX_VALUE); // a stop with --drain
            List<Object> emitted = new ArrayList<>(harness.getOutput());
            assertEquals(List.of(new Watermark(4_000L), WatermarkStatus.IDLE, WatermarkStatus.ACTIVE,
                            new Watermark(Long.MAX_VALUE)), emitted.subList(1, emitted.size()));
        }
    }

    @Test
    void theEndOfInputEmitsTheEndOfEventTimeOnceEvenWhenTheSourcesChainDroppedIt() throws Exception {
        try (var harness = new OneInputStreamOperatorTestHarness<>(new SourceHandoff(0))) {
            harness.open();
            harness.processElement("a", 5_000L);
            harness.processWatermarkStatus(WatermarkStatus.IDLE);
            // Flink 2.2 drops the end-of-input watermark in the idle source's chain output
            // (FLINK-40499): this operator sees only the drained input's end.
            harness.endInput();
            List<Object> emitted = new ArrayList<>(harness.getOutput());
            assertEquals(List.of(WatermarkStatus.IDLE, WatermarkStatus.ACTIVE, new Watermark(Long.MAX_VALUE)),
                    emitted.subList(1, emitted.size()));
        }
        try (var harness = new OneInputStreamOperatorTestHarness<>(new SourceHandoff(0))) {
            harness.open();
            harness.processWatermark(Long.MAX_VALUE); // it came: not again
            harness.endInput();
            assertEquals(List.of(new Watermark(Long.MAX_VALUE)), new ArrayList<>(harness.getOutput()));
        }
    }
}
