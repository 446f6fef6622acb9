package riskstream.flink.kafka;

import java.util.Arrays;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;

/**
 * Writes a line {@code "<key>\t<value>"}, as UTF-8 bytes, as one Kafka message to a fixed topic:
 * the bytes before the first tab are the message key (none when empty), the rest the value (the
 * whole line when it has no tab). The lines stay bytes from the Python worker to Kafka, with no
 * decoding and encoding again. A byte {@code '\t'} is always a tab
 * in UTF-8, never part of a multi-byte character.
 */
public final class KeyedLineBytesSerializer implements KafkaRecordSerializationSchema<byte[]> {
    private static final long serialVersionUID = 1L;
    private final String topic;

    public KeyedLineBytesSerializer(String topic) {
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(byte[] line, KafkaSinkContext context, Long timestamp) {
        int tab = indexOfTab(line);
        byte[] key = tab > 0 ? Arrays.copyOfRange(line, 0, tab) : null;
        byte[] value = tab < 0 ? line : Arrays.copyOfRange(line, tab + 1, line.length);
        // No record timestamp: the producer stamps the send time. Flink's own timestamp can be the
        // end-of-input timer's Long.MAX_VALUE, which the broker rejects.
        return new ProducerRecord<>(topic, null, null, key, value);
    }

    private static int indexOfTab(byte[] line) {
        for (int i = 0; i < line.length; i++) {
            if (line[i] == '\t') {
                return i;
            }
        }
        return -1;
    }
}
