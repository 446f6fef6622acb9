package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.flink.util.InstantiationUtil;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Which Kafka message KeyedLineBytesSerializer makes of a line.
 *
 * <p>The serializer is in streaming/jvm-kafka, which `make java-test` does not compile: this test
 * compiles its source (make runs in the repository's root) against the test class path, which has
 * the Kafka connector from streaming/jvm-test/pom.xml, so it always checks the current source.
 */
class KeyedLineBytesSerializerTest {

    private static final String SOURCE = "streaming/jvm-kafka/riskstream/flink/kafka/KeyedLineBytesSerializer.java";
    private static final String TOPIC = "scores";

    @TempDir
    static Path classes;
    private static ClassLoader loader;
    private static KafkaRecordSerializationSchema<byte[]> serializer;

    @BeforeAll
    @SuppressWarnings("unchecked")
    static void compileTheSerializer() throws Exception {
        assertTrue(Files.isRegularFile(Path.of(SOURCE)), SOURCE + " not found from " + Path.of("").toAbsolutePath());
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        ByteArrayOutputStream errors = new ByteArrayOutputStream();
        int status = javac.run(null, errors, errors, "--release", "11", "-nowarn", "-d", classes.toString(), "-cp",
                System.getProperty("java.class.path"), SOURCE);
        assertEquals(0, status, "javac " + SOURCE + ":\n" + errors.toString(StandardCharsets.UTF_8));
        loader = new URLClassLoader(new URL[] {classes.toUri().toURL()},
                KeyedLineBytesSerializerTest.class.getClassLoader());
        serializer = (KafkaRecordSerializationSchema<byte[]>) loader
                .loadClass("riskstream.flink.kafka.KeyedLineBytesSerializer").getConstructor(String.class)
                .newInstance(TOPIC);
    }

    private static byte[] utf8(String text) {
        return text.getBytes(StandardCharsets.UTF_8);
    }

    private static ProducerRecord<byte[], byte[]> message(KafkaRecordSerializationSchema<byte[]> serializer,
            String line) {
        // Flink's timestamp of a record emitted by the end-of-input timer.
        return serializer.serialize(utf8(line), null, Long.MAX_VALUE);
    }

    @Test
    void theBytesBeforeTheFirstTabAreTheKeyAndTheRestTheValue() {
        ProducerRecord<byte[], byte[]> message = message(serializer, "card-1\t{\"score\": 0.5}");
        assertEquals(TOPIC, message.topic());
        assertArrayEquals(utf8("card-1"), message.key());
        assertArrayEquals(utf8("{\"score\": 0.5}"), message.value());
    }

    @Test
    void hasNoPartitionAndNoTimestampSoTheProducerChooses() {
        ProducerRecord<byte[], byte[]> message = message(serializer, "card-1\t{}");
        assertNull(message.partition());
        assertNull(message.timestamp());
    }

    @Test
    void anEmptyKeyIsNoKey() {
        ProducerRecord<byte[], byte[]> message = message(serializer, "\t{\"score\": 0.5}");
        assertNull(message.key());
        assertArrayEquals(utf8("{\"score\": 0.5}"), message.value());
    }

    @Test
    void aLineWithoutATabIsTheValueWithNoKey() {
        ProducerRecord<byte[], byte[]> message = message(serializer, "{\"score\": 0.5}");
        assertNull(message.key());
        assertArrayEquals(utf8("{\"score\": 0.5}"), message.value());
    }

    @Test
    void aTabAfterTheFirstStaysInTheValue() {
        ProducerRecord<byte[], byte[]> message = message(serializer, "card-1\t{\"note\": \"a\tb\"}\t");
        assertArrayEquals(utf8("card-1"), message.key());
        assertArrayEquals(utf8("{\"note\": \"a\tb\"}\t"), message.value());
    }

    @Test
    void aLineOfATabOnlyIsAnEmptyValueWithNoKey() {
        ProducerRecord<byte[], byte[]> message = message(serializer, "\t");
        assertNull(message.key());
        assertArrayEquals(new byte[0], message.value());
    }

    @Test
    void keysAndValuesKeepMultiByteCharactersByteForByte() {
        // U+0909: its UTF-8 (E0 A4 89) holds no 0x09 byte, as no multi-byte character's does.
        String key = "caf\u00e9-\u0909-\ud83d\ude00";
        String value = "{\"m\": \"\u6570\u636e\u0909\"}";
        ProducerRecord<byte[], byte[]> message = message(serializer, key + "\t" + value);
        assertArrayEquals(utf8(key), message.key());
        assertArrayEquals(utf8(value), message.value());
    }

    @Test
    @SuppressWarnings("unchecked")
    void survivesJavaSerializationAsFlinkShipsIt() throws Exception {
        KafkaRecordSerializationSchema<byte[]> copy = (KafkaRecordSerializationSchema<byte[]>) InstantiationUtil
                .deserializeObject(InstantiationUtil.serializeObject(serializer), loader);
        ProducerRecord<byte[], byte[]> message = message(copy, "k\tv");
        assertEquals(TOPIC, message.topic());
        assertArrayEquals(utf8("k"), message.key());
        assertArrayEquals(utf8("v"), message.value());
    }
}
