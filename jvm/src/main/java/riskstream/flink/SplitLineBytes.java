package riskstream.flink;

import java.util.Arrays;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.util.Collector;

/**
 * Splits a bundle of newline-separated output records, as UTF-8 bytes, into one record per line
 * (still bytes), skipping empty lines, without decoding the bundle to a String and encoding each
 * line again, for a sink that needs one element per message (Kafka). A byte
 * {@code '\n'} is always a newline in UTF-8, never part of a multi-byte character. A bundle of one
 * line is emitted as it is, without a copy.
 */
public final class SplitLineBytes implements FlatMapFunction<byte[], byte[]> {
    private static final long serialVersionUID = 1L;

    @Override
    public void flatMap(byte[] bundle, Collector<byte[]> out) {
        int start = 0;
        for (int end = 0; end < bundle.length; end++) {
            if (bundle[end] == '\n') {
                if (end > start) {
                    out.collect(Arrays.copyOfRange(bundle, start, end));
                }
                start = end + 1;
            }
        }
        if (start < bundle.length) {
            out.collect(start == 0 ? bundle : Arrays.copyOfRange(bundle, start, bundle.length));
        }
    }
}
