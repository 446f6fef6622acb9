package riskstream.flink;

import java.time.Duration;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;

/**
 * The event time of a tagged source record ({@code "<tag>\t<payload>"}), read from its payload's
 * {@code "event_time"} field without parsing the rest: epoch milliseconds (an integer, or a number
 * with no fraction) or ISO-8601 text with a zone, as the Python cleaning code accepts them. A
 * record without a readable event time gets {@link Long#MIN_VALUE}, which moves no watermark; the
 * Python side decides whether it is usable at all (and dead-letters it if not). Used only for
 * watermarks (when windowed analytics are on): it never drops or changes a record.
 */
public final class EventTime implements SerializableTimestampAssigner<String> {

    private static final long serialVersionUID = 1L;
    /** Event times at or past 10000-01-01 are not plausible (the cleaning code rejects them too). */
    static final long MAX_EVENT_TIME_MS = 253_402_300_800_000L;
    private static final String EVENT_TIME = "event_time";
    /** The field read, with its quotes: {@code "event_time"} for transactions, {@code "label_time"} for labels. */
    private final String field;

    public EventTime() {
        this(EVENT_TIME);
    }

    /** Reads the time from the payload's field {@code fieldName} (same forms as event_time). */
    public EventTime(String fieldName) {
        this.field = "\"" + fieldName + "\"";
    }

    /**
     * Flink's per-split watermarks (each split's largest event time minus {@code outOfOrdernessMs},
     * less one millisecond, as Flink's bounded-out-of-orderness generator does) with a split that
     * sends nothing for {@code idlenessMs} no longer holding the watermark back.
     */
    public static WatermarkStrategy<String> watermarks(long outOfOrdernessMs, long idlenessMs) {
        return watermarks(EVENT_TIME, outOfOrdernessMs, idlenessMs);
    }

    /** {@link #watermarks(long, long)} on the time in the payload's field {@code fieldName}. */
    public static WatermarkStrategy<String> watermarks(String fieldName, long outOfOrdernessMs, long idlenessMs) {
        return WatermarkStrategy.<String>forBoundedOutOfOrderness(Duration.ofMillis(outOfOrdernessMs))
                .withTimestampAssigner(new EventTime(fieldName))
                .withIdleness(Duration.ofMillis(idlenessMs));
    }

    @Override
    public long extractTimestamp(String envelope, long recordTimestamp) {
        return timeOf(envelope, field);
    }

    /** The envelope's event time in epoch milliseconds, or Long.MIN_VALUE when it has none readable. */
    public static long of(String envelope) {
        return timeOf(envelope, "\"" + EVENT_TIME + "\"");
    }

    private static long timeOf(String envelope, String field) {
        int key = envelope.indexOf(field, envelope.indexOf('\t') + 1);
        if (key < 0) {
            return Long.MIN_VALUE;
        }
        int i = skipSpaces(envelope, key + field.length());
        if (i >= envelope.length() || envelope.charAt(i) != ':') {
            return Long.MIN_VALUE;
        }
        i = skipSpaces(envelope, i + 1);
        if (i >= envelope.length()) {
            return Long.MIN_VALUE;
        }
        long millis = envelope.charAt(i) == '"' ? isoMillis(envelope, i + 1) : numberMillis(envelope, i);
        return millis >= 0 && millis < MAX_EVENT_TIME_MS ? millis : Long.MIN_VALUE;
    }

    private static int skipSpaces(String text, int i) {
        while (i < text.length() && (text.charAt(i) == ' ' || text.charAt(i) == '\t' || text.charAt(i) == '\r')) {
            i++;
        }
        return i;
    }

    private static long numberMillis(String text, int start) {
        int end = start;
        while (end < text.length() && "0123456789+-.eE".indexOf(text.charAt(end)) >= 0) {
            end++;
        }
        String number = text.substring(start, end);
        try {
            return Long.parseLong(number);
        } catch (NumberFormatException notAnInteger) {
            try {
                double value = Double.parseDouble(number);
                return value == Math.rint(value) && Math.abs(value) < 1e18 ? (long) value : Long.MIN_VALUE;
            } catch (NumberFormatException notANumber) {
                return Long.MIN_VALUE;
            }
        }
    }

    private static long isoMillis(String text, int start) {
        int end = text.indexOf('"', start);
        if (end < 0 || text.lastIndexOf('\\', end) >= start) {
            return Long.MIN_VALUE; // escapes are left to the Python side
        }
        String iso = text.substring(start, end).strip();
        if (iso.endsWith("z")) {
            iso = iso.substring(0, iso.length() - 1) + "Z";
        }
        if (iso.length() > 10 && iso.charAt(10) == ' ') {
            iso = iso.substring(0, 10) + "T" + iso.substring(11);
        }
        try {
            OffsetDateTime moment = OffsetDateTime.parse(iso, DateTimeFormatter.ISO_OFFSET_DATE_TIME);
            return moment.toEpochSecond() * 1000L + Math.round(moment.getNano() / 1e6);
        } catch (DateTimeParseException notIso) {
            return Long.MIN_VALUE;
        }
    }
}
