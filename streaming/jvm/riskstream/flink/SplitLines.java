package riskstream.flink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.util.Collector;

/** Splits a bundle of newline-separated output records (JSON lines) into one record per line. */
public final class SplitLines implements FlatMapFunction<String, String> {
    private static final long serialVersionUID = 1L;

    @Override
    public void flatMap(String bundle, Collector<String> out) {
        int start = 0;
        int end;
        while ((end = bundle.indexOf('\n', start)) >= 0) {
            if (end > start) {
                out.collect(bundle.substring(start, end));
            }
            start = end + 1;
        }
        if (start < bundle.length()) {
            out.collect(bundle.substring(start));
        }
    }
}
