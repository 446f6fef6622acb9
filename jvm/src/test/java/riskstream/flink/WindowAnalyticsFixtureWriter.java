package riskstream.flink;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Collectors;

import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.util.OperatorSnapshotUtil;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledIfSystemProperty;

/**
 * Writes jvm/src/test/resources/window-analytics/: the keyed state and timer of the single-key
 * window-analytics operator (version 1: every window of every group on one key) after the first
 * 17 of WindowAnalyticsTest's random batches (seed 7), the lines it had emitted by then, and every
 * line an uninterrupted run over all 40 batches emits, for the test that restores version 1 into
 * the operators partitioned by group. Run once, at the commit that still had version 1:
 * {@code mvn test -Dtest=WindowAnalyticsFixtureWriter -Driskstream.writeFixture=<folder>}.
 */
class WindowAnalyticsFixtureWriter {
    static final long[] SIZES = {6_000, 10_000};
    static final long[] SLIDES = {6_000, 2_500};
    static final long LATENESS = 500;
    static final int SNAPSHOT_AFTER = 17;

    @Test
    @EnabledIfSystemProperty(named = "riskstream.writeFixture", matches = ".+")
    void writeVersion1Snapshot() throws Exception {
        Path folder = Path.of(System.getProperty("riskstream.writeFixture"));
        List<byte[]> batches = WindowAnalyticsTest.randomBatches(7);
        try (var harness = WindowAnalyticsTest.harness(SIZES, SLIDES, LATENESS, false)) {
            harness.open();
            WindowAnalyticsTest.feed(harness, batches, 0, batches.size(), Long.MIN_VALUE);
            harness.processWatermark(new Watermark(Long.MAX_VALUE));
            write(folder.resolve("v1-uninterrupted.jsonl"), WindowAnalyticsTest.windows(harness));
        }
        try (var harness = WindowAnalyticsTest.harness(SIZES, SLIDES, LATENESS, false)) {
            harness.open();
            WindowAnalyticsTest.feed(harness, batches, 0, SNAPSHOT_AFTER, Long.MIN_VALUE);
            OperatorSnapshotUtil.writeStateHandle(harness.snapshot(1L, 1L), folder.resolve("v1.snapshot").toString());
            write(folder.resolve("v1-emitted-before-snapshot.jsonl"), WindowAnalyticsTest.windows(harness));
        }
    }

    private static void write(Path file, List<JsonNode> lines) throws Exception {
        Files.writeString(file, lines.stream().map(JsonNode::toString).collect(Collectors.joining("\n", "", "\n")),
                StandardCharsets.UTF_8);
    }
}
