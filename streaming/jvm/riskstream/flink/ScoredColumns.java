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
 * batch's output (its score lines, see {@link #ofScoredBatch}), and kept in {@link WindowAnalytics}'
 * keyed state as bytes ({@link #toBytes}, {@link #read}).
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

    ScoredColumns(long[] eventTimes, long[] watermarks, double[] scores, double[] amounts, byte[] labels,
                  String[] txnIds, String[] currencies, String[] accounts, String[][] groups) {
        this.eventTimes = eventTimes;
        this.watermarks = watermarks;
        this.scores = scores;
        this.amounts = amounts;
        this.labels = labels;
        this.txnIds = txnIds;
        this.currencies = currencies;
        this.accounts = accounts;
        this.groups = groups;
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
        long[] eventTimes = new long[n];
        long[] watermarks = new long[n];
        double[] scores = new double[n];
        double[] amounts = new double[n];
        byte[] labels = new byte[n];
        String[] txnIds = new String[n];
        String[] currencies = new String[n];
        String[] accounts = new String[n];
        String[][] groups = new String[groupBy.length][n];
        Arrays.fill(watermarks, Long.MIN_VALUE);
        for (int i = 0; i < lateCount; i++) {
            watermarks[lateRows[i]] = lateWatermarks[i];
        }
        ScoredColumns columns = new ScoredColumns(eventTimes, watermarks, scores, amounts, labels, txnIds, currencies,
                accounts, groups);
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
            int json = start; // past the "<key>\t" prefix (a key holds no tab: see output_bundle in streaming/job.py)
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
        int groupFields = buffer.getInt();
        long[] eventTimes = new long[n];
        long[] watermarks = new long[n];
        double[] scores = new double[n];
        double[] amounts = new double[n];
        byte[] labels = new byte[n];
        buffer.asLongBuffer().get(eventTimes);
        buffer.position(buffer.position() + 8 * n);
        buffer.asLongBuffer().get(watermarks);
        buffer.position(buffer.position() + 8 * n);
        buffer.asDoubleBuffer().get(scores);
        buffer.position(buffer.position() + 8 * n);
        buffer.asDoubleBuffer().get(amounts);
        buffer.position(buffer.position() + 8 * n);
        buffer.get(labels);
        String[] txnIds = readText(buffer, n);
        String[] currencies = readText(buffer, n);
        String[] accounts = readText(buffer, n);
        String[][] groups = new String[groupFields][];
        for (int field = 0; field < groupFields; field++) {
            groups[field] = readText(buffer, n);
        }
        if (buffer.hasRemaining()) {
            throw new IllegalArgumentException("scored columns: " + buffer.remaining() + " bytes after the last column");
        }
        return new ScoredColumns(eventTimes, watermarks, scores, amounts, labels, txnIds, currencies, accounts, groups);
    }

    private static String[] readText(ByteBuffer buffer, int n) {
        int[] lengths = new int[n];
        buffer.asIntBuffer().get(lengths);
        buffer.position(buffer.position() + 4 * n);
        String[] values = new String[n];
        byte[] array = buffer.array();
        int position = buffer.position();
        for (int i = 0; i < n; i++) {
            values[i] = new String(array, position, lengths[i], StandardCharsets.UTF_8);
            position += lengths[i];
        }
        buffer.position(position);
        return values;
    }

    /** The records at {@code rows}, in that order. */
    ScoredColumns take(int[] rows) {
        int n = rows.length;
        long[] eventTimes = new long[n];
        long[] watermarks = new long[n];
        double[] scores = new double[n];
        double[] amounts = new double[n];
        byte[] labels = new byte[n];
        String[] txnIds = new String[n];
        String[] currencies = new String[n];
        String[] accounts = new String[n];
        String[][] groups = new String[this.groups.length][n];
        for (int i = 0; i < n; i++) {
            int row = rows[i];
            eventTimes[i] = this.eventTimes[row];
            watermarks[i] = this.watermarks[row];
            scores[i] = this.scores[row];
            amounts[i] = this.amounts[row];
            labels[i] = this.labels[row];
            txnIds[i] = this.txnIds[row];
            currencies[i] = this.currencies[row];
            accounts[i] = this.accounts[row];
            for (int field = 0; field < groups.length; field++) {
                groups[field][i] = this.groups[field][row];
            }
        }
        return new ScoredColumns(eventTimes, watermarks, scores, amounts, labels, txnIds, currencies, accounts, groups);
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
