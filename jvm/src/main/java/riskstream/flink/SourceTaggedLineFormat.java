package riskstream.flink;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.src.FileSourceSplit;
import org.apache.flink.connector.file.src.impl.StreamFormatAdapter;
import org.apache.flink.connector.file.src.reader.BulkFormat;
import org.apache.flink.connector.file.src.reader.SimpleStreamFormat;
import org.apache.flink.connector.file.src.reader.StreamFormat;
import org.apache.flink.core.fs.FSDataInputStream;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * Reads text files line by line and tags every line with the file and line number it came from.
 *
 * <p>Each record is {@code "file:<line>:<path>\t<payload>"}: the line number counts from 1, tabs and
 * newlines in the path are escaped, and the payload is the line's bytes (without the newline) as
 * ISO-8859-1 text, so every byte reaches Python unchanged. Deciding whether those bytes are valid
 * UTF-8, a usable size or a transaction at all is left to the Python cleaning code; this class never
 * drops, trims or replaces anything. A final line without a newline is a record; a newline at the end
 * of the file does not start another one.
 *
 * <p>Files are not split, so one reader sees a file's lines in order. On restore the file source skips
 * the records already emitted by reading them again through the same reader, which keeps the line
 * numbers right.
 */
public final class SourceTaggedLineFormat implements BulkFormat<String, FileSourceSplit> {

    private static final long serialVersionUID = 1L;

    @Override
    public BulkFormat.Reader<String> createReader(Configuration config, FileSourceSplit split)
            throws IOException {
        return linesOf(split).createReader(config, split);
    }

    @Override
    public BulkFormat.Reader<String> restoreReader(Configuration config, FileSourceSplit split)
            throws IOException {
        return linesOf(split).restoreReader(config, split);
    }

    @Override
    public boolean isSplittable() {
        return false;
    }

    @Override
    public TypeInformation<String> getProducedType() {
        return Types.STRING;
    }

    private static StreamFormatAdapter<String> linesOf(FileSourceSplit split) {
        String path = split.path().toUri().getPath().replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n");
        return new StreamFormatAdapter<>(new TaggedLines(path));
    }

    /** The lines of one file, each prefixed with its source tag. */
    static final class TaggedLines extends SimpleStreamFormat<String> {
        private static final long serialVersionUID = 1L;
        private final String escapedPath;

        TaggedLines(String escapedPath) {
            this.escapedPath = escapedPath;
        }

        @Override
        public StreamFormat.Reader<String> createReader(Configuration config, FSDataInputStream stream) {
            return new LineReader(stream, escapedPath);
        }

        @Override
        public TypeInformation<String> getProducedType() {
            return Types.STRING;
        }
    }

    static final class LineReader implements StreamFormat.Reader<String> {
        private final FSDataInputStream in;
        private final String escapedPath;
        private final byte[] buffer = new byte[1 << 16];
        private int position;
        private int limit;
        private byte[] line = new byte[1024];
        private int lineLength;
        private long lineNumber;
        private boolean endOfFile;

        LineReader(FSDataInputStream in, String escapedPath) {
            this.in = in;
            this.escapedPath = escapedPath;
        }

        @Override
        public String read() throws IOException {
            lineLength = 0;
            boolean sawBytes = false;
            while (true) {
                if (position == limit) {
                    if (endOfFile || !refill()) {
                        return sawBytes ? emit() : null;
                    }
                }
                sawBytes = true;
                int start = position;
                while (position < limit && buffer[position] != '\n') {
                    position++;
                }
                append(start, position - start);
                if (position < limit) {
                    position++; // the newline itself is not part of the record
                    return emit();
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

        private void append(int start, int length) {
            if (lineLength + length > line.length) {
                line = Arrays.copyOf(line, Math.max(line.length * 2, lineLength + length));
            }
            System.arraycopy(buffer, start, line, lineLength, length);
            lineLength += length;
        }

        private String emit() {
            lineNumber++;
            return new StringBuilder(lineLength + escapedPath.length() + 24)
                    .append("file:").append(lineNumber).append(':').append(escapedPath).append('\t')
                    .append(new String(line, 0, lineLength, StandardCharsets.ISO_8859_1))
                    .toString();
        }

        @Override
        public void close() throws IOException {
            in.close();
        }
    }
}
