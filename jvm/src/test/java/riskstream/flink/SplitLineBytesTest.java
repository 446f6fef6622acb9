package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;

import org.apache.flink.api.common.functions.util.ListCollector;
import org.apache.flink.util.InstantiationUtil;
import org.junit.jupiter.api.Test;

/** Which lines SplitLineBytes makes of a bundle, byte for byte. */
class SplitLineBytesTest {

    private static byte[] utf8(String text) {
        return text.getBytes(StandardCharsets.UTF_8);
    }

    private static List<byte[]> split(SplitLineBytes splitter, byte[] bundle) {
        List<byte[]> lines = new ArrayList<>();
        splitter.flatMap(bundle, new ListCollector<>(lines));
        return lines;
    }

    /** The lines of a bundle, decoded from UTF-8 to compare them as text. */
    private static List<String> lines(String bundle) {
        return split(new SplitLineBytes(), utf8(bundle)).stream().map(line -> new String(line, StandardCharsets.UTF_8))
                .collect(Collectors.toList());
    }

    @Test
    void splitsABundleIntoItsLines() {
        assertEquals(List.of("{\"a\": 1}", "{\"a\": 2}", "{\"a\": 3}"), lines("{\"a\": 1}\n{\"a\": 2}\n{\"a\": 3}"));
    }

    @Test
    void aBundleOfOneLineIsThatLineWithoutACopy() {
        byte[] bundle = utf8("{\"a\": 1}");
        List<byte[]> lines = split(new SplitLineBytes(), bundle);
        assertEquals(1, lines.size());
        assertSame(bundle, lines.get(0));
    }

    @Test
    void skipsEmptyLinesAtTheEndsAndInTheMiddle() {
        assertEquals(List.of("a", "b", "c"), lines("\n\na\n\n\nb\nc\n\n"));
        assertEquals(List.of("a"), lines("\na"));
        assertEquals(List.of("a"), lines("a\n"));
    }

    @Test
    void emitsNothingForAnEmptyBundleOrOneOfNewlinesOnly() {
        assertEquals(List.of(), lines(""));
        assertEquals(List.of(), lines("\n"));
        assertEquals(List.of(), lines("\n\n\n"));
    }

    @Test
    void keepsMultiByteCharactersWhole() {
        String first = "{\"m\": \"caf\u00e9 \u00a0\"}";
        String second = "{\"m\": \"\u6570\u636e\"}";
        String third = "\ud83d\ude00\t{\"m\": \"\u0100\u0a0a\"}"; // U+0A0A: no 0x0A byte in its UTF-8
        List<byte[]> lines = split(new SplitLineBytes(), utf8(first + "\n" + second + "\n" + third));
        assertEquals(3, lines.size());
        assertEquals(List.of(first, second, third),
                lines.stream().map(line -> new String(line, StandardCharsets.UTF_8)).collect(Collectors.toList()));
        assertEquals(utf8(third).length, lines.get(2).length);
    }

    @Test
    void survivesJavaSerializationAsFlinkShipsIt() throws Exception {
        SplitLineBytes copy = InstantiationUtil.clone(new SplitLineBytes());
        assertEquals(2, split(copy, utf8("a\nb")).size());
    }
}
