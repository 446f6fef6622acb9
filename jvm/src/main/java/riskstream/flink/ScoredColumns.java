package riskstream.flink;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.StreamReadFeature;

/**
 * What windowed analytics needs of a batch of scored records, as columns: read from a scored
 * batch's output (its score lines, see {@link #ofScoredBatch}), split by group ({@link GroupSplit})
 * and kept in {@link WindowAnalytics}' keyed state as bytes ({@link #toBytes}, {@link #read}).
 *
 * <p>The bytes, little-endian: int32 record count n, int32 group field count g; int64[n] event times
 * (epoch ms); int64[n] watermarks (each record's effective watermark at its arrival, epoch ms);
 * float64[n] scores (probability of fraud before learning); float64[n] amounts; int8[n] labels (0, 1,
 * or -1 for none); then 3 + g text columns (transaction ids, currencies, account pseudonyms, then
 * each group field's values), each as int32[n] UTF-8 byte lengths followed by the UTF-8 bytes joined.
 */
final class ScoredColumns {
    final long[] eventTimes;
    final long[] watermarks;
    final double[] scores;
    final double[] amounts;
    final byte[] labels;
    final String[] txnIds;
    final String[] currencies;
    final String[] accounts;
    final String[][] groups; // [group field][record]

    /** Columns for {@code n} records and {@code groupFields} group fields, to be filled in. */
    private ScoredColumns(int n, int groupFields) {
        eventTimes = new long[n];
        watermarks = new long[n];
        scores = new double[n];
        amounts = new double[n];
        labels = new byte[n];
        txnIds = new String[n];
        currencies = new String[n];
        accounts = new String[n];
        groups = new String[groupFields][n];
    }

    int size() {
        return eventTimes.length;
    }

    // The fast double parser rounds correctly too (the same double as Double.parseDouble).
    private static final JsonFactory JSON = JsonFactory.builder().enable(StreamReadFeature.USE_FAST_DOUBLE_PARSER).build();

    /**
     * The records of a scored batch's output with analytics on (see {@link AnalyticsHeader}): its
     * header gives the effective watermark (epoch ms) of each record the scoring operator found late;
     * every other record gets {@link Long#MIN_VALUE} (it was late for none of its windows). Then one
     * score line per record (JSON, after a {@code <key>\t} prefix when {@code keyed}), in the batch's
     * order, from which the event time, score, label, amount, currency, account pseudonym, transaction
     * id and the {@code groupBy} fields are read.
     */
    static ScoredColumns ofScoredBatch(byte[] batch, String[] groupBy, boolean keyed) throws IOException {
        ByteBuffer header = ByteBuffer.wrap(batch).order(ByteOrder.LITTLE_ENDIAN);
        int lateCount = header.getInt();
        int[] lateRows = new int[lateCount];
        long[] lateWatermarks = new long[lateCount];
        for (int i = 0; i < lateCount; i++) {
            lateRows[i] = header.getInt();
        }
        for (int i = 0; i < lateCount; i++) {
            lateWatermarks[i] = header.getLong();
        }
        int start = header.position();
        int n = 0;
        for (int i = start; i < batch.length; i++) {
            if (batch[i] == '\n') {
                n++;
            }
        }
        n += batch.length > start ? 1 : 0;
        ScoredColumns columns = new ScoredColumns(n, groupBy.length);
        Arrays.fill(columns.watermarks, Long.MIN_VALUE);
        for (int i = 0; i < lateCount; i++) {
            columns.watermarks[lateRows[i]] = lateWatermarks[i];
        }
        if (!keyed) { // one parser for the whole bundle: JSON values one after another
            try (JsonParser parser = JSON.createParser(batch, start, batch.length - start)) {
                for (int row = 0; row < n; row++) {
                    columns.readScoreLine(parser, row, groupBy);
                }
            }
            return columns;
        }
        for (int row = 0; row < n; row++) {
            int end = start;
            while (end < batch.length && batch[end] != '\n') {
                end++;
            }
            int json = start; // past the "<key>\t" prefix (a key holds no tab: see output_bundle in udfs/wire.py)
            while (json < end && batch[json] != '\t') {
                json++;
            }
            try (JsonParser parser = JSON.createParser(batch, json + 1, end - json - 1)) {
                columns.readScoreLine(parser, row, groupBy);
            }
            start = end + 1;
        }
        return columns;
    }

    /** Reads the next score line (a JSON object) from {@code parser} into record {@code row}. */
    private void readScoreLine(JsonParser parser, int row, String[] groupBy) throws IOException {
        parser.nextToken(); // the object's start
        labels[row] = -1;
        while (parser.nextToken() == JsonToken.FIELD_NAME) {
            String field = parser.currentName();
            JsonToken value = parser.nextToken();
            switch (field) {
                case "txn_id": txnIds[row] = parser.getText(); break;
                case "score": scores[row] = parser.getDoubleValue(); break;
                case "label": labels[row] = value == JsonToken.VALUE_NULL ? -1 : (byte) parser.getIntValue(); break;
                case "event_time": eventTimes[row] = parser.getLongValue(); break;
                case "amount": amounts[row] = parser.getDoubleValue(); break;
                case "currency": currencies[row] = parser.getText(); break;
                case "account": accounts[row] = parser.getText(); break;
                default:
                    parser.skipChildren();
            }
            for (int g = 0; g < groupBy.length; g++) {
                if (groupBy[g].equals(field)) {
                    groups[g][row] = parser.getText();
                }
            }
        }
    }

    static ScoredColumns read(byte[] data) {
        ByteBuffer buffer = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        int n = buffer.getInt();
        ScoredColumns columns = new ScoredColumns(n, buffer.getInt());
        buffer.asLongBuffer().get(columns.eventTimes);
        buffer.position(buffer.position() + 8 * n);
        buffer.asLongBuffer().get(columns.watermarks);
        buffer.position(buffer.position() + 8 * n);
        buffer.asDoubleBuffer().get(columns.scores);
        buffer.position(buffer.position() + 8 * n);
        buffer.asDoubleBuffer().get(columns.amounts);
        buffer.position(buffer.position() + 8 * n);
        buffer.get(columns.labels);
        readText(buffer, columns.txnIds);
        readText(buffer, columns.currencies);
        readText(buffer, columns.accounts);
        for (String[] values : columns.groups) {
            readText(buffer, values);
        }
        if (buffer.hasRemaining()) {
            throw new IllegalArgumentException("scored columns: " + buffer.remaining() + " bytes after the last column");
        }
        return columns;
    }

    private static void readText(ByteBuffer buffer, String[] values) {
        int[] lengths = new int[values.length];
        buffer.asIntBuffer().get(lengths);
        buffer.position(buffer.position() + 4 * values.length);
        byte[] array = buffer.array();
        int position = buffer.position();
        for (int i = 0; i < values.length; i++) {
            values[i] = new String(array, position, lengths[i], StandardCharsets.UTF_8);
            position += lengths[i];
        }
        buffer.position(position);
    }

    /** The records at {@code rows}, in that order. */
    ScoredColumns take(int[] rows) {
        return take(rows, true);
    }

    /**
     * The records at {@code rows}, in that order, with no group column: a group's records in
     * {@link GroupSplit}'s sub-batches, whose key names the group.
     */
    ScoredColumns takeWithoutGroups(int[] rows) {
        return take(rows, false);
    }

    private ScoredColumns take(int[] rows, boolean withGroups) {
        ScoredColumns taken = new ScoredColumns(rows.length, withGroups ? groups.length : 0);
        for (int i = 0; i < rows.length; i++) {
            int row = rows[i];
            taken.eventTimes[i] = eventTimes[row];
            taken.watermarks[i] = watermarks[row];
            taken.scores[i] = scores[row];
            taken.amounts[i] = amounts[row];
            taken.labels[i] = labels[row];
            taken.txnIds[i] = txnIds[row];
            taken.currencies[i] = currencies[row];
            taken.accounts[i] = accounts[row];
            for (int field = 0; field < taken.groups.length; field++) {
                taken.groups[field][i] = groups[field][row];
            }
        }
        return taken;
    }

    /** The bytes {@link #read} reads. */
    byte[] toBytes() {
        int n = size();
        byte[][][] texts = new byte[3 + groups.length][][];
        texts[0] = utf8(txnIds);
        texts[1] = utf8(currencies);
        texts[2] = utf8(accounts);
        for (int field = 0; field < groups.length; field++) {
            texts[3 + field] = utf8(groups[field]);
        }
        int length = 8 + 33 * n;
        for (byte[][] column : texts) {
            length += 4 * n;
            for (byte[] value : column) {
                length += value.length;
            }
        }
        ByteBuffer buffer = ByteBuffer.allocate(length).order(ByteOrder.LITTLE_ENDIAN);
        buffer.putInt(n).putInt(groups.length);
        for (long value : eventTimes) {
            buffer.putLong(value);
        }
        for (long value : watermarks) {
            buffer.putLong(value);
        }
        for (double value : scores) {
            buffer.putDouble(value);
        }
        for (double value : amounts) {
            buffer.putDouble(value);
        }
        buffer.put(labels);
        for (byte[][] column : texts) {
            for (byte[] value : column) {
                buffer.putInt(value.length);
            }
            for (byte[] value : column) {
                buffer.put(value);
            }
        }
        return buffer.array();
    }

    private static byte[][] utf8(String[] values) {
        byte[][] encoded = new byte[values.length][];
        for (int i = 0; i < values.length; i++) {
            encoded[i] = values[i].getBytes(StandardCharsets.UTF_8);
        }
        return encoded;
    }
}
