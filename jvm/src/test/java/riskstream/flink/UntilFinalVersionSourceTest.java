package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;

import org.junit.jupiter.api.Test;

/** Which version messages end the versions source. */
class UntilFinalVersionSourceTest {

    private static boolean isFinal(String message) {
        return UntilFinalVersionSource.isFinal(message.getBytes(StandardCharsets.UTF_8));
    }

    @Test
    void onlyAMessageMarkedFinalEndsTheSource() {
        assertTrue(isFinal("{\"version\":7,\"oldest_base_version\":6,\"final\":true}"));
        assertTrue(isFinal("\"final\":true"));
        assertFalse(isFinal("{\"version\":7,\"oldest_base_version\":6}"));
        assertFalse(isFinal("{\"version\":7,\"final\":false}"));
        assertFalse(isFinal("\"final\":tru"));
        assertFalse(isFinal(""));
    }
}
