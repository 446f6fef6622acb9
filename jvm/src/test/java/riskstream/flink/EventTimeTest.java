package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

/** Which event time EventTime reads from a tagged record, for the watermarks of windowed analytics. */
class EventTimeTest {

    private static long of(String payload) {
        return EventTime.of("file:1:/data/a.jsonl\t" + payload);
    }

    @Test
    void readsEpochMillisecondsAndIntegralNumbers() {
        assertEquals(1767225600123L, of("{\"txn_id\": \"t1\", \"event_time\": 1767225600123, \"amount\": 5}"));
        assertEquals(1767225600000L, of("{\"event_time\" : 1767225600000.0}"));
        assertEquals(1767225600000L, of("{\"event_time\":1.7672256e12}"));
    }

    @Test
    void readsIsoTextWithAZoneAsThePythonCleaningDoes() {
        assertEquals(1767225600123L, of("{\"event_time\": \"2026-01-01T00:00:00.123Z\"}"));
        assertEquals(1767225600000L, of("{\"event_time\": \"2026-01-01 01:00:00+01:00\"}"));
        assertEquals(1767225600000L, of("{\"event_time\": \" 2026-01-01T00:00:00z \"}"));
    }

    @Test
    void aRecordWithoutAReadableEventTimeMovesNoWatermark() {
        for (String payload : new String[] {
            "{\"amount\": 5}", "{\"event_time\": 1767225600000.5}", "{\"event_time\": \"2026-01-01T10:00:00\"}",
            "{\"event_time\": \"yesterday\"}", "{\"event_time\": -5}", "{\"event_time\": true}",
            "{\"event_time\": 253402300800000}", "{\"event_time\": \"2026-01-01T00:00:00\\u005a\"}", "not json",
            "{\"event_time\": \"2026-13-45T00:00:00Z\"}",
        }) {
            assertEquals(Long.MIN_VALUE, of(payload), payload);
        }
    }

    @Test
    void labelsAreTimedByTheirLabelTime() {
        EventTime labelTime = new EventTime("label_time");
        String label = "file:3:/data/labels.jsonl\t{\"txn_id\": \"t1\", \"event_time\": 5, \"label_time\": \"2026-01-01T00:00:00Z\"}";
        assertEquals(1767225600000L, labelTime.extractTimestamp(label, 0));
        assertEquals(5L, new EventTime().extractTimestamp(label, 0));
        assertEquals(Long.MIN_VALUE, labelTime.extractTimestamp("file:1:/l.jsonl\t{\"txn_id\": \"t1\"}", 0));
    }

    @Test
    void theTagIsNotRead() {
        assertEquals(Long.MIN_VALUE, EventTime.of("file:1:/data/\"event_time\": 5\t{}"));
    }
}
