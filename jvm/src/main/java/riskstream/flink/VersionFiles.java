package riskstream.flink;

import java.io.IOException;
import java.time.Duration;
import java.util.Arrays;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.src.FileSource;
import org.apache.flink.connector.file.src.FileSourceSplit;
import org.apache.flink.connector.file.src.PendingSplitsCheckpoint;
import org.apache.flink.connector.file.src.reader.SimpleStreamFormat;
import org.apache.flink.connector.file.src.reader.StreamFormat;
import org.apache.flink.core.fs.FSDataInputStream;
import org.apache.flink.core.fs.Path;

/**
 * The global model's versions read back from a folder, the route of runs whose outputs are files
 * (docs/design.md, "Route back"): the aggregator's FileSink writes one version message per line
 * into part files that it commits at checkpoints, and this source watches the folder and ends
 * after the final version ({@link UntilFinalVersionSource}).
 *
 * <p>Only committed part files are read: a FileSink's in-progress and pending files are hidden
 * (their names start with a dot), and the FileSource's default file filter skips hidden files, so a
 * version becomes visible when the checkpoint that wrote it completes, as with a read-committed
 * Kafka reader. The source's checkpoint holds the files already read and the position in the one
 * being read, so a restore goes on from there. Files are read whole, in the order they are found.
 */
public final class VersionFiles {
    private VersionFiles() {
    }

    /**
     * The versions source of {@code folder} (a local path or URI), looked at for new files every
     * {@code discoveryIntervalMs} milliseconds (>= 1); one reader (parallelism 1).
     */
    public static UntilFinalVersionSource<FileSourceSplit, PendingSplitsCheckpoint<FileSourceSplit>> source(
            String folder, long discoveryIntervalMs) {
        if (discoveryIntervalMs < 1) {
            throw new IllegalArgumentException("discoveryIntervalMs must be >= 1");
        }
        FileSource<byte[]> files = FileSource.forRecordStreamFormat(new Lines(), new Path(folder))
                .monitorContinuously(Duration.ofMillis(discoveryIntervalMs))
                .build();
        return new UntilFinalVersionSource<>(files);
    }

    /** Each non-empty line of a file as its bytes, without the newline; files are not split. */
    public static final class Lines extends SimpleStreamFormat<byte[]> {
        private static final long serialVersionUID = 1L;

        @Override
        public StreamFormat.Reader<byte[]> createReader(Configuration config, FSDataInputStream stream) {
            return new LineReader(stream);
        }

        @Override
        public TypeInformation<byte[]> getProducedType() {
            return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
        }
    }

    static final class LineReader implements StreamFormat.Reader<byte[]> {
        private final FSDataInputStream in;
        private final byte[] buffer = new byte[1 << 16];
        private int position;
        private int limit;
        private boolean endOfFile;

        LineReader(FSDataInputStream in) {
            this.in = in;
        }

        /** The next non-empty line, or null at the end of the file. */
        @Override
        public byte[] read() throws IOException {
            byte[] line = new byte[0];
            while (true) {
                if (position == limit && (endOfFile || !refill())) {
                    return line.length > 0 ? line : null;
                }
                int start = position;
                while (position < limit && buffer[position] != '\n') {
                    position++;
                }
                if (position > start) {
                    int length = line.length;
                    line = Arrays.copyOf(line, length + position - start);
                    System.arraycopy(buffer, start, line, length, position - start);
                }
                if (position < limit) {
                    position++; // the newline
                    if (line.length > 0) {
                        return line;
                    }
                }
            }
        }

        private boolean refill() throws IOException {
            int read = in.read(buffer, 0, buffer.length);
            if (read <= 0) {
                endOfFile = true;
                return false;
            }
            position = 0;
            limit = read;
            return true;
        }

        @Override
        public void close() throws IOException {
            in.close();
        }
    }
}
