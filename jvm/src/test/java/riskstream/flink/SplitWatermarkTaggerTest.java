package riskstream.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.util.List;

import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeHint;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.KeyedOneInputStreamOperatorTestHarness;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.junit.jupiter.api.Test;

/** The split watermark SplitWatermarkTagger puts on each record, and that it survives a restore. */
class SplitWatermarkTaggerTest {

    private static final long OUT_OF_ORDERNESS_MS = 100L;

    private static KeyedOneInputStreamOperatorTestHarness<String, byte[], String> harness() throws Exception {
        return new KeyedOneInputStreamOperatorTestHarness<>(new SplitWatermarkTagger(OUT_OF_ORDERNESS_MS),
                SplitWatermarkTagger.bySplit(), Types.STRING);
    }

    @Test
    void eachRecordCarriesItsOwnSplitsLargestEventTimeMinusTheOutOfOrderness() throws Exception {
        try (var harness = harness()) {
            harness.open();
            harness.processElement(bytes("file:1:/a.jsonl\tx"), 1_000L);
            harness.processElement(bytes("file:2:/a.jsonl\ty"), 900L); // behind: the split keeps 1,000
            harness.processElement(bytes("kafka:0:7:tx\tz"), 5_000L); // another split
            harness.processElement(bytes("file:3:/a.jsonl\tw"), 1_200L);
            harness.processElement(bytes("kafka:1:7:tx\tv"), Long.MIN_VALUE); // no event time yet in partition 1
            harness.processElement(bytes("kafka:0:8:tx\tu"), 4_000L);
            assertEquals(List.of("@900\tfile:1:/a.jsonl\tx", "@900\tfile:2:/a.jsonl\ty", "@4900\tkafka:0:7:tx\tz",
                    "@1100\tfile:3:/a.jsonl\tw", "@" + Long.MIN_VALUE + "\tkafka:1:7:tx\tv", "@4900\tkafka:0:8:tx\tu"),
                    harness.extractOutputValues());
        }
    }

    private static byte[] bytes(String line) {
        return line.getBytes(StandardCharsets.UTF_8);
    }

    @Test
    void splitsAreFilesAndKafkaPartitions() {
        assertEquals("file:/data/a b.jsonl", SplitWatermarkTagger.splitOf("file:12:/data/a b.jsonl\t{}"));
        assertEquals("kafka:2:transactions", SplitWatermarkTagger.splitOf("kafka:2:99:transactions\t{}"));
        assertEquals("other", SplitWatermarkTagger.splitOf("other"));
        assertEquals("file:/data/é.jsonl", SplitWatermarkTagger.splitOf(bytes("file:3:/data/é.jsonl\t{\"x\":\"é\"}")));
        assertEquals("kafka:0:tx", SplitWatermarkTagger.splitOf(bytes("kafka:0:5:tx")));
    }

    @Test
    void watermarksPassThrough() throws Exception {
        try (var harness = harness()) {
            harness.open();
            harness.processWatermark(new Watermark(Long.MAX_VALUE));
            assertEquals(List.of(new Watermark(Long.MAX_VALUE)), List.copyOf(harness.getOutput()));
        }
    }

    @Test
    void aRestoredTaggerContinuesEachSplitsWatermark() throws Exception {
        OperatorSubtaskState state;
        try (var harness = harness()) {
            harness.open();
            harness.processElement(bytes("file:1:/a.jsonl\tx"), 10_000L);
            harness.processElement(bytes("kafka:0:1:tx\ty"), 20_000L);
            state = harness.snapshot(1L, 1L);
            harness.processElement(bytes("file:2:/a.jsonl\tz"), 50_000L); // after the checkpoint: replayed
        }
        try (var restored = harness()) {
            restored.initializeState(state);
            restored.open();
            restored.processElement(bytes("file:2:/a.jsonl\tz"), 5_000L);
            restored.processElement(bytes("kafka:0:2:tx\tw"), 1_000L);
            assertEquals(List.of("@9900\tfile:2:/a.jsonl\tz", "@19900\tkafka:0:2:tx\tw"), restored.extractOutputValues());
        }
    }

    /** Keeps figures as the chained SplitWatermarkTagger before the keyed one did: union list state. */
    private static final class ChainedTaggerState extends AbstractStreamOperator<String>
            implements OneInputStreamOperator<String, String> {
        @Override
        public void initializeState(StateInitializationContext context) throws Exception {
            super.initializeState(context);
            ListState<Tuple2<String, Long>> state = context.getOperatorStateStore().getUnionListState(
                    new ListStateDescriptor<>(SplitWatermarkTagger.LEGACY_STATE_NAME,
                            TypeInformation.of(new TypeHint<Tuple2<String, Long>>() {})));
            state.update(List.of(Tuple2.of("file:/a.jsonl", 10_000L), Tuple2.of("kafka:0:tx", 20_000L)));
        }

        @Override
        public void processElement(StreamRecord<String> element) {
        }
    }

    @Test
    void aSavepointOfTheChainedTaggerSeedsEachSplitsWatermark() throws Exception {
        OperatorSubtaskState state;
        try (var chained = new OneInputStreamOperatorTestHarness<>(new ChainedTaggerState())) {
            chained.open();
            state = chained.snapshot(1L, 1L);
        }
        OperatorSubtaskState next;
        try (var restored = harness()) {
            restored.initializeState(state);
            restored.open();
            restored.processElement(bytes("file:2:/a.jsonl\tz"), 5_000L);
            restored.processElement(bytes("kafka:0:2:tx\tw"), 30_000L);
            restored.processElement(bytes("kafka:1:2:tx\tv"), 1_000L); // a split the savepoint did not have
            assertEquals(List.of("@9900\tfile:2:/a.jsonl\tz", "@29900\tkafka:0:2:tx\tw", "@900\tkafka:1:2:tx\tv"),
                    restored.extractOutputValues());
            next = restored.snapshot(2L, 2L);
        }
        try (var again = harness()) { // the figures now live in keyed state
            again.initializeState(next);
            again.open();
            again.processElement(bytes("file:3:/a.jsonl\ty"), 1L);
            again.processElement(bytes("kafka:0:3:tx\tx"), 1L);
            assertEquals(List.of("@9900\tfile:3:/a.jsonl\ty", "@29900\tkafka:0:3:tx\tx"), again.extractOutputValues());
        }
    }
}
