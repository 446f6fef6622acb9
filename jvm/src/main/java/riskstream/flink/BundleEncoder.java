package riskstream.flink;

import java.io.IOException;
import java.io.OutputStream;

import org.apache.flink.api.common.serialization.Encoder;

/**
 * Writes a bundle of output records to a file sink as it is: its UTF-8 bytes, then one
 * {@code '\n'}. A bundle is newline-separated lines (JSON lines) with no trailing newline, so the
 * file gets one line per record with no per-line work and no UTF-8/UTF-16 conversion (what
 * splitting into Strings and {@code SimpleStringEncoder} cost). The bytes are not looked at: an empty
 * line inside a bundle, or a trailing newline, would reach the file as is. An empty bundle writes
 * nothing.
 */
public final class BundleEncoder implements Encoder<byte[]> {
    private static final long serialVersionUID = 1L;

    @Override
    public void encode(byte[] bundle, OutputStream stream) throws IOException {
        if (bundle.length == 0) {
            return;
        }
        stream.write(bundle);
        stream.write('\n');
    }
}
