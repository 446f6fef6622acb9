package riskstream.flink.kafka;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.util.Collector;

/**
 * Hands every Kafka record to Python byte for byte, tagged with where it came from:
 * {@code "kafka:<partition>:<offset>:<topic>\t<value>"}. The value's bytes are ISO-8859-1
 * characters (so invalid UTF-8 is seen, and judged, in Python), with backslash and newline
 * escaped as {@code \\} and {@code \n} because records travel in newline-separated bundles. A
 * record without a value (a tombstone) arrives as an empty payload and is dead-lettered there.
 */
public final class TaggedKafkaDeserializer implements KafkaRecordDeserializationSchema<String> {
    private static final long serialVersionUID = 1L;

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<String> out) {
        byte[] value = record.value() == null ? new byte[0] : record.value();
        StringBuilder tagged = new StringBuilder(value.length + 48)
                .append("kafka:").append(record.partition()).append(':').append(record.offset()).append(':')
                .append(record.topic()).append('\t');
        for (byte b : value) {
            char c = (char) (b & 0xff);
            if (c == '\\') {
                tagged.append("\\\\");
            } else if (c == '\n') {
                tagged.append("\\n");
            } else {
                tagged.append(c);
            }
        }
        out.collect(tagged.toString());
    }

    @Override
    public TypeInformation<String> getProducedType() {
        return Types.STRING;
    }
}
