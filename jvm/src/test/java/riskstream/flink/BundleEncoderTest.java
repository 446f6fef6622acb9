package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;

import org.apache.flink.util.InstantiationUtil;
import org.junit.jupiter.api.Test;

/** What BundleEncoder writes to a file sink's part file for each bundle. */
class BundleEncoderTest {

    private static byte[] utf8(String text) {
        return text.getBytes(StandardCharsets.UTF_8);
    }

    /** The bytes a part file gets for these bundles, encoded one after the other. */
    private static byte[] written(BundleEncoder encoder, byte[]... bundles) throws IOException {
        ByteArrayOutputStream file = new ByteArrayOutputStream();
        for (byte[] bundle : bundles) {
            encoder.encode(bundle, file);
        }
        return file.toByteArray();
    }

    @Test
    void writesABundleOfOneLineAsThatLine() throws IOException {
        assertArrayEquals(utf8("{\"a\": 1}\n"), written(new BundleEncoder(), utf8("{\"a\": 1}")));
    }

    @Test
    void writesABundleOfSeveralLinesAsThoseLines() throws IOException {
        assertArrayEquals(utf8("{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3}\n"),
                written(new BundleEncoder(), utf8("{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3}")));
    }

    @Test
    void bundlesFollowOneAnotherLineByLine() throws IOException {
        assertEquals("a\nb\nc\n", new String(written(new BundleEncoder(), utf8("a\nb"), utf8("c")),
                StandardCharsets.UTF_8));
    }

    @Test
    void writesNothingForAnEmptyBundle() throws IOException {
        assertArrayEquals(utf8("a\nb\n"), written(new BundleEncoder(), utf8("a"), new byte[0], utf8("b")));
    }

    @Test
    void passesNonAsciiUtf8ThroughByteForByte() throws IOException {
        // Two-, three- and four-byte characters, and bytes that are not UTF-8 at all: none is decoded.
        byte[] bundle = utf8("{\"m\": \"caf\u00e9\"}\n{\"m\": \"\u6570\u636e \ud83d\ude00\"}");
        byte[] notUtf8 = {(byte) 0xff, (byte) 0xc3, 0x41};
        byte[] expected = new byte[bundle.length + 1 + notUtf8.length + 1];
        System.arraycopy(bundle, 0, expected, 0, bundle.length);
        expected[bundle.length] = '\n';
        System.arraycopy(notUtf8, 0, expected, bundle.length + 1, notUtf8.length);
        expected[expected.length - 1] = '\n';
        assertArrayEquals(expected, written(new BundleEncoder(), bundle, notUtf8));
    }

    @Test
    void survivesJavaSerializationAsFlinkShipsIt() throws Exception {
        BundleEncoder copy = InstantiationUtil.clone(new BundleEncoder());
        assertArrayEquals(utf8("a\nb\n"), written(copy, utf8("a\nb")));
    }
}
