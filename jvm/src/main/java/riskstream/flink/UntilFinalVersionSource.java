package riskstream.flink;

import java.nio.charset.StandardCharsets;
import java.util.Collection;
import java.util.List;
import java.util.concurrent.CompletableFuture;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.connector.source.Boundedness;
import org.apache.flink.api.connector.source.ReaderOutput;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.api.connector.source.SourceEvent;
import org.apache.flink.api.connector.source.SourceOutput;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.SourceSplit;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.core.io.InputStatus;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * The global model's versions source: any source of version messages as bytes, one record per
 * version, that ENDS after the first version marked final ({@code "final":true},
 * udfs/global_scoring.py FINAL_MARKER). Two routes use it (docs/design.md, "Route back"): Flink's
 * Kafka source of the model-versions topic (read committed, values as bytes:
 * {@code kafka.VersionValues}) and a FileSource watching the model-versions folder
 * ({@link VersionFiles}). Neither can stop by itself at the right place: a bounded run's last
 * version is written by the job itself, after its transactions ended, and the scoring operator,
 * which reads these versions as its second input, ends only when this source does.
 *
 * <p>Everything but the end is the wrapped source's: splits, enumerator, positions in checkpoints
 * and their commit. Meant for one reader (parallelism 1). This class loads no Kafka class, so
 * the file route runs without the Kafka connector on the class path.
 */
public final class UntilFinalVersionSource<SplitT extends SourceSplit, EnumChkT>
        implements Source<byte[], SplitT, EnumChkT>, ResultTypeQueryable<byte[]> {
    private static final long serialVersionUID = 1L;
    static final byte[] FINAL_MARKER = "\"final\":true".getBytes(StandardCharsets.UTF_8);

    private final Source<byte[], SplitT, EnumChkT> inner;

    public UntilFinalVersionSource(Source<byte[], SplitT, EnumChkT> inner) {
        this.inner = inner;
    }

    /** Whether a version message is the final one. */
    public static boolean isFinal(byte[] value) {
        outer:
        for (int i = 0; i + FINAL_MARKER.length <= value.length; i++) {
            for (int j = 0; j < FINAL_MARKER.length; j++) {
                if (value[i + j] != FINAL_MARKER[j]) {
                    continue outer;
                }
            }
            return true;
        }
        return false;
    }

    @Override
    public Boundedness getBoundedness() {
        return inner.getBoundedness();
    }

    @Override
    public SourceReader<byte[], SplitT> createReader(SourceReaderContext context) throws Exception {
        return new UntilFinalReader<>(inner.createReader(context));
    }

    @Override
    public SplitEnumerator<SplitT, EnumChkT> createEnumerator(SplitEnumeratorContext<SplitT> context) throws Exception {
        return inner.createEnumerator(context);
    }

    @Override
    public SplitEnumerator<SplitT, EnumChkT> restoreEnumerator(SplitEnumeratorContext<SplitT> context, EnumChkT checkpoint)
            throws Exception {
        return inner.restoreEnumerator(context, checkpoint);
    }

    @Override
    public SimpleVersionedSerializer<SplitT> getSplitSerializer() {
        return inner.getSplitSerializer();
    }

    @Override
    public SimpleVersionedSerializer<EnumChkT> getEnumeratorCheckpointSerializer() {
        return inner.getEnumeratorCheckpointSerializer();
    }

    @Override
    public TypeInformation<byte[]> getProducedType() {
        return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
    }

    /** The wrapped reader, until it has emitted a final version; then END_OF_INPUT. */
    static final class UntilFinalReader<SplitT extends SourceSplit> implements SourceReader<byte[], SplitT> {
        private final SourceReader<byte[], SplitT> inner;
        private boolean sawFinal;

        UntilFinalReader(SourceReader<byte[], SplitT> inner) {
            this.inner = inner;
        }

        @Override
        public void start() {
            inner.start();
        }

        @Override
        public InputStatus pollNext(ReaderOutput<byte[]> output) throws Exception {
            if (sawFinal) {
                return InputStatus.END_OF_INPUT;
            }
            InputStatus status = inner.pollNext(new Watching(output));
            return sawFinal ? InputStatus.END_OF_INPUT : status;
        }

        @Override
        public List<SplitT> snapshotState(long checkpointId) {
            return inner.snapshotState(checkpointId);
        }

        @Override
        public CompletableFuture<Void> isAvailable() {
            return sawFinal ? CompletableFuture.completedFuture(null) : inner.isAvailable();
        }

        @Override
        public void addSplits(List<SplitT> splits) {
            inner.addSplits(splits);
        }

        @Override
        public void notifyNoMoreSplits() {
            inner.notifyNoMoreSplits();
        }

        @Override
        public void handleSourceEvents(SourceEvent event) {
            inner.handleSourceEvents(event);
        }

        @Override
        public void notifyCheckpointComplete(long checkpointId) throws Exception {
            inner.notifyCheckpointComplete(checkpointId);
        }

        @Override
        public void notifyCheckpointAborted(long checkpointId) throws Exception {
            inner.notifyCheckpointAborted(checkpointId);
        }

        @Override
        public void pauseOrResumeSplits(Collection<String> toPause, Collection<String> toResume) {
            inner.pauseOrResumeSplits(toPause, toResume);
        }

        @Override
        public void close() throws Exception {
            inner.close();
        }

        private void saw(byte[] value) {
            if (isFinal(value)) {
                sawFinal = true;
            }
        }

        /** A SourceOutput that notes a final version on its way out. */
        private class WatchingSplit implements SourceOutput<byte[]> {
            private final SourceOutput<byte[]> out;

            WatchingSplit(SourceOutput<byte[]> out) {
                this.out = out;
            }

            @Override
            public void collect(byte[] value) {
                out.collect(value);
                saw(value);
            }

            @Override
            public void collect(byte[] value, long timestamp) {
                out.collect(value, timestamp);
                saw(value);
            }

            @Override
            public void emitWatermark(Watermark watermark) {
                out.emitWatermark(watermark);
            }

            @Override
            public void markIdle() {
                out.markIdle();
            }

            @Override
            public void markActive() {
                out.markActive();
            }
        }

        private final class Watching extends WatchingSplit implements ReaderOutput<byte[]> {
            private final ReaderOutput<byte[]> output;

            Watching(ReaderOutput<byte[]> output) {
                super(output);
                this.output = output;
            }

            @Override
            public SourceOutput<byte[]> createOutputForSplit(String splitId) {
                return new WatchingSplit(output.createOutputForSplit(splitId));
            }

            @Override
            public void releaseOutputForSplit(String splitId) {
                output.releaseOutputForSplit(splitId);
            }
        }
    }
}
