package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.connector.source.ReaderOutput;
import org.apache.flink.api.connector.source.SourceEvent;
import org.apache.flink.api.connector.source.SourceOutput;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.src.FileSourceSplit;
import org.apache.flink.connector.file.src.enumerate.DefaultFileFilter;
import org.apache.flink.core.fs.FileSystem;
import org.apache.flink.core.fs.Path;
import org.apache.flink.core.fs.RecoverableFsDataOutputStream;
import org.apache.flink.core.fs.local.LocalDataInputStream;
import org.apache.flink.core.io.InputStatus;
import org.apache.flink.metrics.groups.SourceReaderMetricGroup;
import org.apache.flink.metrics.groups.UnregisteredMetricsGroup;
import org.apache.flink.util.UserCodeClassLoader;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The file route of the global model's versions: what is visible, how lines are read, where it ends. */
class VersionFilesTest {

    private static String text(byte[] bytes) {
        return new String(bytes, StandardCharsets.UTF_8);
    }

    @Test
    void aFileSinkPartIsHiddenFromTheSourceUntilItIsCommitted(@TempDir File folder) throws IOException {
        // The writer a FileSink uses on a local folder: its in-progress (and, after a checkpoint,
        // pending) file is the staging file; committing renames it to the part file's name.
        Path target = new Path(new File(folder, "model-versions-writer-0.jsonl").toURI());
        RecoverableFsDataOutputStream out = FileSystem.getLocalFileSystem().createRecoverableWriter().open(target);
        out.write("{\"version\":0}\n".getBytes(StandardCharsets.UTF_8));
        out.flush();
        DefaultFileFilter visible = new DefaultFileFilter();
        List<String> staged = List.of(folder.list());
        assertEquals(1, staged.size());
        assertTrue(staged.get(0).startsWith(".model-versions-writer-0.jsonl.inprogress."), staged.get(0));
        assertFalse(visible.test(new Path(folder.getPath(), staged.get(0))));

        RecoverableFsDataOutputStream.Committer pending = out.closeForCommit();
        assertFalse(visible.test(new Path(folder.getPath(), folder.list()[0])), "pending: still hidden");
        pending.commit();
        assertEquals(List.of("model-versions-writer-0.jsonl"), List.of(folder.list()));
        assertTrue(visible.test(target));
    }

    @Test
    void everyNonEmptyLineIsOneRecordByteForByte(@TempDir File folder) throws IOException {
        File file = new File(folder, "part.jsonl");
        byte[] big = new byte[100_000]; // longer than the reader's buffer
        java.util.Arrays.fill(big, (byte) 'x');
        String content = "{\"version\":0}\n\n{\"é\":1}\n" + new String(big, StandardCharsets.US_ASCII) + "\nlast";
        Files.write(file.toPath(), content.getBytes(StandardCharsets.UTF_8));
        VersionFiles.LineReader reader = new VersionFiles.LineReader(new LocalDataInputStream(file));
        List<String> lines = new ArrayList<>();
        for (byte[] line = reader.read(); line != null; line = reader.read()) {
            lines.add(text(line));
        }
        reader.close();
        assertEquals(List.of("{\"version\":0}", "{\"é\":1}", new String(big, StandardCharsets.US_ASCII), "last"), lines);
    }

    /** VersionFiles' wrapped reader on `folder`, started, with `part` whole as its one split. */
    private static SourceReader<byte[], FileSourceSplit> startedOn(File folder, File part) throws Exception {
        SourceReader<byte[], FileSourceSplit> reader =
                VersionFiles.source(folder.getPath(), 10).createReader(new Context());
        reader.start();
        reader.addSplits(List.of(new FileSourceSplit("0", new Path(part.toURI()), 0, part.length(),
                part.lastModified(), part.length())));
        return reader;
    }

    @Test
    void theSourceEndsAfterTheFinalVersionAndEmitsNothingAfterIt(@TempDir File folder) throws Exception {
        File part = new File(folder, "model-versions-a-0.jsonl");
        Files.write(part.toPath(), ("{\"version\":0}\n{\"version\":1}\n{\"version\":2,\"final\":true}\n"
                + "{\"version\":3}\n").getBytes(StandardCharsets.UTF_8));
        SourceReader<byte[], FileSourceSplit> reader = startedOn(folder, part);
        Collected output = new Collected();
        InputStatus status = InputStatus.NOTHING_AVAILABLE;
        for (int polls = 0; polls < 10_000 && status != InputStatus.END_OF_INPUT; polls++) {
            reader.isAvailable().get();
            status = reader.pollNext(output);
        }
        assertEquals(InputStatus.END_OF_INPUT, status);
        assertEquals(List.of("{\"version\":0}", "{\"version\":1}", "{\"version\":2,\"final\":true}"),
                output.records.stream().map(VersionFilesTest::text).collect(Collectors.toList()));
        assertEquals(InputStatus.END_OF_INPUT, reader.pollNext(output));
        assertEquals(3, output.records.size());
        reader.close();
    }

    @Test
    void anUnfinishedFolderKeepsTheSourceOpen(@TempDir File folder) throws Exception {
        File part = new File(folder, "model-versions-a-0.jsonl");
        Files.write(part.toPath(), "{\"version\":0}\n{\"version\":1}\n".getBytes(StandardCharsets.UTF_8));
        SourceReader<byte[], FileSourceSplit> reader = startedOn(folder, part);
        Collected output = new Collected();
        for (int polls = 0; polls < 10_000 && output.records.size() < 2; polls++) {
            reader.isAvailable().get();
            assertTrue(reader.pollNext(output) != InputStatus.END_OF_INPUT);
        }
        assertEquals(2, output.records.size());
        // The split is done and no final version came: the reader waits for more splits.
        assertNotEquals(InputStatus.END_OF_INPUT, reader.pollNext(output));
        assertEquals(2, output.records.size());
        reader.close();
    }

    private static final class Collected implements ReaderOutput<byte[]> {
        final List<byte[]> records = new ArrayList<>();

        @Override
        public void collect(byte[] record) {
            records.add(record);
        }

        @Override
        public void collect(byte[] record, long timestamp) {
            records.add(record);
        }

        @Override
        public void emitWatermark(Watermark watermark) {
        }

        @Override
        public void markIdle() {
        }

        @Override
        public void markActive() {
        }

        @Override
        public SourceOutput<byte[]> createOutputForSplit(String splitId) {
            return this;
        }

        @Override
        public void releaseOutputForSplit(String splitId) {
        }
    }

    private static final class Context implements SourceReaderContext {
        @Override
        public SourceReaderMetricGroup metricGroup() {
            return UnregisteredMetricsGroup.createSourceReaderMetricGroup();
        }

        @Override
        public Configuration getConfiguration() {
            return new Configuration();
        }

        @Override
        public String getLocalHostName() {
            return "localhost";
        }

        @Override
        public int getIndexOfSubtask() {
            return 0;
        }

        @Override
        public void sendSplitRequest() {
        }

        @Override
        public void sendSourceEventToCoordinator(SourceEvent sourceEvent) {
        }

        @Override
        public UserCodeClassLoader getUserCodeClassLoader() {
            return new UserCodeClassLoader() {
                @Override
                public ClassLoader asClassLoader() {
                    return VersionFilesTest.class.getClassLoader();
                }

                @Override
                public void registerReleaseHookIfAbsent(String releaseHookName, Runnable releaseHook) {
                }
            };
        }
    }
}
