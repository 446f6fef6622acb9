package riskstream.flink.kafka;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;

import java.nio.charset.StandardCharsets;

/**
 * Writes a line {@code "<key>\t<value>"} as one Kafka message to a fixed topic: the text before the
 * first tab is the message key (none when empty), the rest the value, both UTF-8.
 */
public final class KeyedLineSerializer implements KafkaRecordSerializationSchema<String> {
    private static final long serialVersionUID = 1L;
    private final String topic;

    public KeyedLineSerializer(String topic) {
        this.topic = topic;
    }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(String line, KafkaSinkContext context, Long timestamp) {
        int tab = line.indexOf('\t');
        byte[] key = tab > 0 ? line.substring(0, tab).getBytes(StandardCharsets.UTF_8) : null;
        byte[] value = line.substring(tab + 1).getBytes(StandardCharsets.UTF_8);
        // No record timestamp: the producer stamps the send time. Flink's own timestamp can be the
        // end-of-input timer's Long.MAX_VALUE, which the broker rejects.
        return new ProducerRecord<>(topic, null, null, key, value);
    }
}
