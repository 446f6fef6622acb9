package riskstream.flink.kafka;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import java.nio.charset.StandardCharsets;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.flink.util.InstantiationUtil;
import org.junit.jupiter.api.Test;

/** Which Kafka message KeyedLineBytesSerializer makes of a line. */
class KeyedLineBytesSerializerTest {

    private static final String TOPIC = "scores";
    private final KafkaRecordSerializationSchema<byte[]> serializer = new KeyedLineBytesSerializer(TOPIC);

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
                .deserializeObject(InstantiationUtil.serializeObject(serializer), getClass().getClassLoader());
        ProducerRecord<byte[], byte[]> message = message(copy, "k\tv");
        assertEquals(TOPIC, message.topic());
        assertArrayEquals(utf8("k"), message.key());
        assertArrayEquals(utf8("v"), message.value());
    }
}
