package riskstream.flink;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * Event-time windowed analytics of the scored stream, one group at a time: takes {@link GroupSplit}'s
 * sub-batches (a group's records of each scored batch, with the effective watermark of each record
 * the scoring operator's {@code late_records} in udfs/analytics.py found late: see
 * {@link AnalyticsHeader}), keyed by group ({@link GroupSplit#byGroup}), and emits each window's
 * figures for the group once, when the watermark reaches the window's end plus the allowed
 * lateness. A record counts in each of its windows that were not emitted when it arrived and that
 * its own watermark had not reached. The rules are those of udfs/analytics.py, the figures those of
 * tests/reference/analytics.py ({@code analyze}, the reference the tests compare the job with); the
 * output lines are its {@code window_line}s and {@code late} lines.
 *
 * <p>Keyed by group, so the work spreads over every subtask and each group's pending windows move
 * with its key group on a rescale; the lines are the same at any parallelism. Keyed state holds,
 * per group, the records whose windows are not all emitted yet (a sub-batch appended as it comes,
 * rewritten when windows are emitted) and the watermark through which the group's windows were
 * emitted; this instance keeps a decoded copy of each group's, read from state the first time the
 * group is met after a start or restore. An event-time timer per group at its earliest due window;
 * its firing emits every window of the group due at the current watermark and sets the next.
 * The records a savepoint of the single-key version held come from {@link UnpartitionedAnalyticsState}.
 *
 * <p>Times are epoch milliseconds. Flink's watermark trails the one udfs/analytics.py defines by
 * 1 ms (Flink's bounded out-of-orderness generator subtracts it), so a window due at {@code due}
 * fires at Flink's {@code due - 1}.
 */
public final class WindowAnalytics extends KeyedProcessFunction<String, byte[], byte[]> {
    private static final long serialVersionUID = 2L;

    /**
     * Late lines of records that would have counted in windows already emitted: the scoring side
     * writes late records itself, so this happens only when a restore met an idle split; never
     * dropped silently.
     */
    public static final OutputTag<byte[]> LATE = new OutputTag<>(
            "window-late", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);

    private static final int SCHEMA_VERSION = 1;
    private static final int LINES_PER_BUNDLE = 1_000;
    private static final long NONE = Long.MAX_VALUE;

    private final long[] sizesMs;
    private final long[] slidesMs;
    private final String[] windowNames;
    private final String firstGroupField;
    private final long allowedLatenessMs;
    private final double scoreClip;
    private final boolean keyedOutput;
    private final String metricsGroup;

    private transient ListState<byte[]> pendingState;
    private transient ValueState<Long> emittedThroughState;
    private transient Map<String, Group> groups; // the groups met since the start or restore
    private transient Counter late;

    /** What this instance keeps of a group's state, decoded, and the due time of its timer. */
    private static final class Group {
        List<ScoredColumns> pending = new ArrayList<>();
        long emittedThrough = Long.MIN_VALUE;
        long timerDue = NONE; // NONE if none set since the start or restore
    }

    /**
     * @param sizesMs each window spec's size, ms (> 0)
     * @param slidesMs each spec's slide, ms (> 0; equal to the size for tumbling windows)
     * @param windowNames each spec's name in the output lines (udfs.analytics.WindowSpec.name)
     * @param groupBy the group fields (late lines come from the first one's groups, so once a record)
     * @param allowedLatenessMs how long after its end a window waits, ms (>= 0)
     * @param scoreClip scores are clipped to [scoreClip, 1 - scoreClip] for the log loss
     * @param keyedOutput whether each line gets a {@code <key>\t} prefix (Kafka message keys)
     * @param metricsGroup the metric group of the {@code late} counter
     */
    public WindowAnalytics(long[] sizesMs, long[] slidesMs, String[] windowNames, String[] groupBy,
                           long allowedLatenessMs, double scoreClip, boolean keyedOutput, String metricsGroup) {
        if (sizesMs.length != slidesMs.length || sizesMs.length != windowNames.length) {
            throw new IllegalArgumentException("one size, slide and name per window spec");
        }
        if (groupBy.length == 0) {
            throw new IllegalArgumentException("at least one group field");
        }
        this.sizesMs = sizesMs.clone();
        this.slidesMs = slidesMs.clone();
        this.windowNames = windowNames.clone();
        this.firstGroupField = groupBy[0];
        this.allowedLatenessMs = allowedLatenessMs;
        this.scoreClip = scoreClip;
        this.keyedOutput = keyedOutput;
        this.metricsGroup = metricsGroup;
    }

    @Override
    public void open(OpenContext openContext) throws Exception {
        pendingState = getRuntimeContext().getListState(
                new ListStateDescriptor<>("pending-batches", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        emittedThroughState = getRuntimeContext().getState(new ValueStateDescriptor<>("emitted-through", Types.LONG));
        late = getRuntimeContext().getMetricGroup().addGroup(metricsGroup).counter("late");
        groups = new HashMap<>();
    }

    @Override
    public void processElement(byte[] subBatch, Context ctx, Collector<byte[]> out) throws Exception {
        String key = ctx.getCurrentKey();
        Group group = group(key);
        byte[] records = GroupSplit.recordsOf(subBatch);
        ScoredColumns columns = ScoredColumns.read(records);
        List<byte[]> lateLines = new ArrayList<>();
        List<String> lateKeys = new ArrayList<>();
        if (group.emittedThrough != Long.MIN_VALUE) {
            if (fieldOf(key).equals(firstGroupField)) { // a record is in one group of each field
                for (int spec = 0; spec < sizesMs.length; spec++) {
                    for (int r = 0; r < columns.size(); r++) {
                        byte[] line = lateLine(spec, columns, r, group.emittedThrough);
                        if (line != null) {
                            lateLines.add(line);
                            lateKeys.add(columns.txnIds[r]);
                        }
                    }
                }
            }
            // Kept with the watermark it counts by: a window emitted before it came is not its.
            for (int r = 0; r < columns.size(); r++) {
                columns.watermarks[r] = Math.max(columns.watermarks[r], group.emittedThrough);
            }
            records = columns.toBytes();
        }
        group.pending.add(columns);
        pendingState.add(records);
        setTimer(group, earliestDue(List.of(columns), group.emittedThrough), ctx);
        late.inc(lateLines.size());
        for (byte[] bundle : bundles(lateLines, lateKeys)) {
            ctx.output(LATE, bundle);
        }
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<byte[]> out) throws Exception {
        String key = ctx.getCurrentKey();
        Group group = group(key);
        long flinkWatermark = Math.max(timestamp, ctx.timerService().currentWatermark());
        long watermark = flinkWatermark == Long.MAX_VALUE ? Long.MAX_VALUE : flinkWatermark + 1;
        if (group.timerDue <= watermark) {
            group.timerDue = NONE; // fired
        }
        List<byte[]> lines = new ArrayList<>();
        emit(key, group, watermark, lines);
        setTimer(group, earliestDue(group.pending, group.emittedThrough), ctx);
        List<String> keys = Collections.nCopies(lines.size(), key);
        for (byte[] bundle : bundles(lines, keys)) {
            out.collect(bundle);
        }
    }

    /** The group of the current key, read from state the first time it is met. */
    private Group group(String key) throws Exception {
        Group group = groups.get(key);
        if (group == null) {
            group = new Group();
            Iterable<byte[]> stored = pendingState.get();
            if (stored != null) {
                for (byte[] batch : stored) {
                    group.pending.add(ScoredColumns.read(batch));
                }
            }
            Long storedThrough = emittedThroughState.value();
            group.emittedThrough = storedThrough == null ? Long.MIN_VALUE : storedThrough;
            groups.put(key, group);
        }
        return group;
    }

    private static String fieldOf(String key) {
        return key.substring(0, key.indexOf('='));
    }

    private void setTimer(Group group, long due, Context ctx) {
        if (due != NONE && due < group.timerDue) {
            ctx.timerService().registerEventTimeTimer(due - 1);
            group.timerDue = due;
        }
    }

    /** The start of the newest window of spec {@code spec} holding {@code eventTime}. */
    private long newestStart(int spec, long eventTime) {
        return eventTime - Math.floorMod(eventTime, slidesMs[spec]);
    }

    private long dueTime(int spec, long start) {
        return start + sizesMs[spec] + allowedLatenessMs;
    }

    /**
     * Whether a record with effective watermark {@code watermark} counts in a window due at
     * {@code due} of a group whose windows were emitted through {@code emittedThrough}.
     */
    private static boolean countsIn(long due, long watermark, long emittedThrough) {
        return due > emittedThrough && watermark < due;
    }

    /** The earliest due time of a window not emitted yet that a record of {@code batches} counts in; NONE if none. */
    private long earliestDue(List<ScoredColumns> batches, long emittedThrough) {
        long earliest = NONE;
        for (ScoredColumns columns : batches) {
            for (int r = 0; r < columns.size(); r++) {
                long eventTime = columns.eventTimes[r];
                for (int spec = 0; spec < sizesMs.length; spec++) {
                    for (long start = newestStart(spec, eventTime); start > eventTime - sizesMs[spec];
                         start -= slidesMs[spec]) {
                        long due = dueTime(spec, start);
                        if (due < earliest && countsIn(due, columns.watermarks[r], emittedThrough)) {
                            earliest = due;
                        }
                    }
                }
            }
        }
        return earliest;
    }

    /**
     * The late line of record {@code r} for the windows of {@code spec} emitted before it came that
     * its own watermark had not reached (so it would have counted in them); null if none.
     */
    private byte[] lateLine(int spec, ScoredColumns columns, int r, long emittedThrough) {
        long eventTime = columns.eventTimes[r];
        long own = columns.watermarks[r];
        long effective = Math.max(own, emittedThrough);
        StringBuilder missed = null;
        // Oldest window first, as the reference sorts them.
        long newest = newestStart(spec, eventTime);
        long oldest = newest;
        while (oldest - slidesMs[spec] > eventTime - sizesMs[spec]) {
            oldest -= slidesMs[spec];
        }
        for (long start = oldest; start <= newest; start += slidesMs[spec]) {
            long due = dueTime(spec, start);
            if (effective >= due && own < due) {
                missed = missed == null ? new StringBuilder() : missed.append(',');
                missed.append("{\"window_start\":").append(start).append(",\"window_end\":")
                        .append(start + sizesMs[spec]).append(",\"late_by_ms\":").append(effective - due).append('}');
            }
        }
        if (missed == null) {
            return null;
        }
        StringBuilder line = new StringBuilder(200);
        line.append("{\"schema_version\":").append(SCHEMA_VERSION).append(",\"txn_id\":");
        appendString(line, columns.txnIds[r]);
        line.append(",\"model_key\":null,\"event_time\":").append(eventTime).append(",\"window\":");
        appendString(line, windowNames[spec]);
        line.append(",\"watermark\":").append(effective).append(",\"missed\":[").append(missed).append("]}");
        return line.toString().getBytes(StandardCharsets.UTF_8);
    }

    /**
     * Adds to {@code lines} the line of every window of the group {@code key} due at or before
     * {@code watermark} and not emitted before, by due time, window spec and start; lets go of the
     * records whose windows are all emitted.
     */
    private void emit(String key, Group group, long watermark, List<byte[]> lines) throws Exception {
        if (watermark <= group.emittedThrough || group.pending.isEmpty()) {
            group.emittedThrough = Math.max(group.emittedThrough, watermark);
            emittedThroughState.update(group.emittedThrough);
            return;
        }
        TreeMap<WindowKey, Figures> windows = new TreeMap<>();
        List<ScoredColumns> remaining = new ArrayList<>();
        boolean changed = false;
        for (ScoredColumns columns : group.pending) {
            int[] kept = new int[columns.size()];
            int keptCount = 0;
            for (int r = 0; r < columns.size(); r++) {
                long eventTime = columns.eventTimes[r];
                boolean waits = false;
                for (int spec = 0; spec < sizesMs.length; spec++) {
                    long newest = newestStart(spec, eventTime);
                    waits |= dueTime(spec, newest) > watermark;
                    for (long start = newest; start > eventTime - sizesMs[spec]; start -= slidesMs[spec]) {
                        long due = dueTime(spec, start);
                        if (due <= watermark && countsIn(due, columns.watermarks[r], group.emittedThrough)) {
                            windows.computeIfAbsent(new WindowKey(due, spec, start), window -> new Figures()).add(columns, r);
                        }
                    }
                }
                if (waits) {
                    kept[keptCount++] = r;
                }
            }
            if (keptCount == columns.size()) {
                remaining.add(columns);
            } else {
                changed = true;
                if (keptCount > 0) {
                    remaining.add(columns.take(Arrays.copyOf(kept, keptCount)));
                }
            }
        }
        group.emittedThrough = watermark;
        emittedThroughState.update(group.emittedThrough);
        if (changed) {
            group.pending = remaining;
            List<byte[]> stored = new ArrayList<>(remaining.size());
            for (ScoredColumns columns : remaining) {
                stored.add(columns.toBytes());
            }
            pendingState.update(stored);
        }
        String field = fieldOf(key);
        String groupName = key.substring(field.length() + 1);
        for (Map.Entry<WindowKey, Figures> window : windows.entrySet()) {
            lines.add(windowLine(window.getKey(), field, groupName, window.getValue()));
        }
    }

    private byte[] windowLine(WindowKey key, String field, String group, Figures figures) {
        StringBuilder line = new StringBuilder(400);
        line.append("{\"schema_version\":").append(SCHEMA_VERSION).append(",\"window\":");
        appendString(line, windowNames[key.spec]);
        line.append(",\"window_start\":").append(key.start).append(",\"window_end\":")
                .append(key.start + sizesMs[key.spec]).append(",\"group_by\":");
        appendString(line, field);
        line.append(",\"group\":");
        appendString(line, group);
        figures.appendTo(line, scoreClip);
        return line.append('}').toString().getBytes(StandardCharsets.UTF_8);
    }

    /** Lines joined into output bundles of at most LINES_PER_BUNDLE, each line as {@code <key>\t<line>} with keyedOutput. */
    private List<byte[]> bundles(List<byte[]> lines, List<String> keys) {
        List<byte[]> bundles = new ArrayList<>();
        for (int first = 0; first < lines.size(); first += LINES_PER_BUNDLE) {
            int end = Math.min(first + LINES_PER_BUNDLE, lines.size());
            ByteArrayOutputStream bundle = new ByteArrayOutputStream();
            for (int i = first; i < end; i++) {
                if (i > first) {
                    bundle.write('\n');
                }
                if (keyedOutput) {
                    bundle.writeBytes(keys.get(i).replace('\t', ' ').getBytes(StandardCharsets.UTF_8));
                    bundle.write('\t');
                }
                bundle.writeBytes(lines.get(i));
            }
            bundles.add(bundle.toByteArray());
        }
        return bundles;
    }

    /** A window of the group, ordered as the output lines are: due time, spec, start. */
    private static final class WindowKey implements Comparable<WindowKey> {
        private static final Comparator<WindowKey> ORDER = Comparator.<WindowKey>comparingLong(key -> key.due)
                .thenComparingInt(key -> key.spec).thenComparingLong(key -> key.start);
        final long due;
        final int spec;
        final long start;

        WindowKey(long due, int spec, long start) {
            this.due = due;
            this.spec = spec;
            this.start = start;
        }

        @Override
        public int compareTo(WindowKey other) {
            return ORDER.compare(this, other);
        }
    }

    /** The running figures of one window and group (tests/reference/analytics.py, WindowFigures). */
    static final class Figures {
        long transactions;
        long frauds;
        double scoreSum;
        final TreeMap<String, double[]> amounts = new TreeMap<>(); // currency -> {count, sum, max}
        final HashSet<String> accounts = new HashSet<>();
        double[] labelledScores = new double[8];
        byte[] labels = new byte[8];
        int labelled;

        void add(ScoredColumns columns, int r) {
            transactions++;
            double score = columns.scores[r];
            scoreSum += score;
            accounts.add(columns.accounts[r]);
            double amount = columns.amounts[r];
            double[] currency = amounts.get(columns.currencies[r]);
            if (currency == null) {
                amounts.put(columns.currencies[r], new double[] {1, amount, amount});
            } else {
                currency[0] += 1;
                currency[1] += amount;
                if (amount > currency[2]) {
                    currency[2] = amount;
                }
            }
            byte label = columns.labels[r];
            if (label >= 0) {
                frauds += label;
                if (labelled == labels.length) {
                    labelledScores = Arrays.copyOf(labelledScores, 2 * labelled);
                    labels = Arrays.copyOf(labels, 2 * labelled);
                }
                labelledScores[labelled] = score;
                labels[labelled++] = label;
            }
        }

        /**
         * Appends the figures as JSON members: counts; fraud rate over the labelled records; amount
         * sum, mean and max per currency; distinct accounts; mean score; log loss (nats, scores
         * clipped to [scoreClip, 1 - scoreClip]) and ROC AUC (ties counting half) of the labelled
         * records; null where there is nothing to average over, the AUC also for one class.
         */
        void appendTo(StringBuilder line, double scoreClip) {
            line.append(",\"transactions\":").append(transactions)
                    .append(",\"labelled_transactions\":").append(labelled)
                    .append(",\"fraud_count\":").append(frauds).append(",\"fraud_rate\":");
            appendNumber(line, labelled > 0 ? (double) frauds / labelled : null);
            line.append(",\"amount\":{");
            boolean first = true;
            for (Map.Entry<String, double[]> currency : amounts.entrySet()) {
                double[] figures = currency.getValue();
                if (!first) {
                    line.append(',');
                }
                first = false;
                appendString(line, currency.getKey());
                line.append(":{\"sum\":");
                appendNumber(line, figures[1]);
                line.append(",\"mean\":");
                appendNumber(line, figures[1] / figures[0]);
                line.append(",\"max\":");
                appendNumber(line, figures[2]);
                line.append('}');
            }
            line.append("},\"distinct_accounts\":").append(accounts.size()).append(",\"mean_score\":");
            appendNumber(line, transactions > 0 ? scoreSum / transactions : null);
            line.append(",\"log_loss\":");
            appendNumber(line, labelled > 0 ? logLoss(scoreClip) : null);
            line.append(",\"roc_auc\":");
            appendNumber(line, rocAuc());
        }

        private double logLoss(double scoreClip) {
            double sum = 0;
            for (int i = 0; i < labelled; i++) {
                double p = Math.min(Math.max(labelledScores[i], scoreClip), 1 - scoreClip);
                sum += labels[i] == 1 ? -Math.log(p) : -Math.log(1 - p);
            }
            return sum / labelled;
        }

        /** By the rank-sum statistic, tied scores sharing their mean rank; null for one class. */
        private Double rocAuc() {
            double positives = frauds;
            double negatives = labelled - frauds;
            if (positives == 0 || negatives == 0) {
                return null;
            }
            Integer[] order = new Integer[labelled];
            for (int i = 0; i < labelled; i++) {
                order[i] = i;
            }
            Arrays.sort(order, (a, b) -> Double.compare(labelledScores[a], labelledScores[b]));
            double rankSum = 0;
            for (int first = 0; first < labelled; ) {
                int end = first + 1;
                while (end < labelled && labelledScores[order[end]] == labelledScores[order[first]]) {
                    end++;
                }
                double meanRank = (first + 1 + end) / 2.0; // ranks first + 1 .. end, 1-based
                for (int i = first; i < end; i++) {
                    rankSum += meanRank * labels[order[i]];
                }
                first = end;
            }
            return (rankSum - positives * (positives + 1) / 2) / (positives * negatives);
        }
    }

    private static void appendNumber(StringBuilder line, Double value) {
        if (value == null) {
            line.append("null");
        } else {
            line.append(value.doubleValue());
        }
    }

    /** {@code value} as a JSON string (quotes, backslashes and control characters escaped). */
    static void appendString(StringBuilder line, String value) {
        line.append('"');
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            if (c == '"' || c == '\\') {
                line.append('\\').append(c);
            } else if (c < 0x20) {
                line.append(String.format("\\u%04x", (int) c));
            } else {
                line.append(c);
            }
        }
        line.append('"');
    }
}
