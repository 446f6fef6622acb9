package riskstream.flink;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;

import org.apache.flink.api.common.functions.MapFunction;

/**
 * With windowed analytics on, each output bundle of the scoring operator starts with a header for
 * {@link WindowAnalytics} (udfs/wire.py, {@code analytics_header}): little-endian int32 k, then
 * the k int32 positions in the bundle of the records the scoring operator found late, then their k
 * int64 effective watermarks (epoch ms). The score lines follow. This map removes the header, so
 * that the scores sinks get the score lines alone.
 */
public final class AnalyticsHeader implements MapFunction<byte[], byte[]> {
    private static final long serialVersionUID = 1L;

    @Override
    public byte[] map(byte[] bundle) {
        int late = ByteBuffer.wrap(bundle).order(ByteOrder.LITTLE_ENDIAN).getInt(0);
        return Arrays.copyOfRange(bundle, length(late), bundle.length);
    }

    /** The header's length in bytes for {@code late} late records. */
    static int length(int late) {
        return 4 + 12 * late;
    }
}
