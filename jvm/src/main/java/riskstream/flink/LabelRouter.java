package riskstream.flink;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.stream.Stream;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.metrics.Counter;
import org.apache.flink.runtime.state.KeyedStateBackend;
import org.apache.flink.runtime.state.VoidNamespace;
import org.apache.flink.runtime.state.VoidNamespaceSerializer;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.streaming.api.functions.co.KeyedCoProcessFunction;
import org.apache.flink.streaming.api.operators.co.KeyedCoProcessOperator;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * Sends each label to the shard that scored its transaction, with what is known of that
 * transaction, so the shard's model can learn from it. Keyed by txn_id ({@link #txnIdKey()} on both
 * inputs). It decides nothing about a label's outcome (applied, duplicate, contradicting, expired,
 * unknown: Python decides); it keeps the lookup from txn_id to shard and forwards every label, in
 * arrival order, with the labels seen before it.
 *
 * <p>All lines are UTF-8 bytes, fields separated by {@code '\t'}, without {@code '\n'}. Times are
 * epoch milliseconds.
 *
 * <ul>
 *   <li>Input 1, a route, one per transaction scored: {@code txn_id \t shard \t event_time \t
 *       inline_label \t where}; shard in [0, shards); inline_label -1 (none), or 0 / 1: the label the
 *       transaction carried and was learned from when it was scored; where: where the scoring
 *       operator logs the transaction's features (opaque here, passed on with each label).
 *   <li>Input 2, a label: {@code txn_id \t is_fraud \t label_time \t source}; is_fraud 0 / 1,
 *       source possibly empty.
 *   <li>Output, a label of a known transaction: {@code shard \t label \t txn_id \t event_time \t
 *       is_fraud \t label_time \t source \t history \t where}, where history is every label seen for the
 *       transaction before this one, in arrival order, as comma-separated {@code is_fraud:label_time}
 *       pairs (the inline label first, at the transaction's event_time), empty when there is none.
 *   <li>Output, a label whose transaction is not known: {@code shard \t unknown \t txn_id \t -1 \t
 *       is_fraud \t label_time \t source \t \t} (empty history and where), with shard {@code
 *       Math.floorMod(txn_id.hashCode(), shards)}: any shard will do, so that Python can dead-letter
 *       it, and this one is the same on every run.
 *   <li>Side output {@link #UNREADABLE}: a dead letter (JSON) for a route or label that does not parse.
 * </ul>
 *
 * <p>A route is remembered until the watermark reaches {@code event_time + rememberMs}. A label that
 * comes before its route (or after the route was forgotten) is held until the route comes, when it is
 * forwarded at once, or until the watermark reaches {@code label_time + unknownWaitMs}, when it is
 * emitted as unknown. A second route for a txn_id already remembered (two transactions sharing one
 * txn_id) is ignored and counted. All of this is keyed state and event-time timers, so a restore
 * continues exactly where the checkpoint was. A late route or label (its time already behind the
 * watermark) is treated the same way: its timer fires at the next watermark.
 *
 * <p>State: one value per txn_id ({@link Entry}: its route and history, or the labels held for it)
 * and one event-time timer per time that matters to it, so that a transaction costs one state read
 * and one write when its route comes, one of each per label, and one read and one removal when it
 * is forgotten: with RocksDB each access is a lookup on disk. Run it as {@link #operator}, which
 * moves a restored version-1 state (three values per txn_id: route, history, held labels) into
 * this layout when it starts.
 *
 * <p>Counters, in the metric group {@code metricsGroup}: {@code duplicate_txn_ids} (routes ignored),
 * {@code unlabelled_transactions} (routes forgotten without any label, inline or streamed) and
 * {@code labels_held_unknown} (labels emitted as unknown).
 */
public final class LabelRouter extends KeyedCoProcessFunction<String, byte[], byte[], byte[]> {
    private static final long serialVersionUID = 1L;

    /**
     * Routes and labels that do not parse (wrong field count, bad numbers), as label dead letters
     * (JSON: schema_version, raw (the line), stage {@code label-route}, reason (one line)): a bug
     * upstream, so never dropped silently.
     */
    public static final OutputTag<byte[]> UNREADABLE = new OutputTag<>(
            "label-router-unreadable", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);

    private static final int NO_LABEL = -1;
    private static final ObjectMapper JSON = new ObjectMapper();

    private final long rememberMs;
    private final long unknownWaitMs;
    private final int shards;
    private final String metricsGroup;

    // The txn_id's Entry: its route and history, or the labels held for it (never both).
    private transient ValueState<byte[]> entryState;
    private transient Counter duplicateTxnIds;
    private transient Counter unlabelledTransactions;
    private transient Counter labelsHeldUnknown;

    /**
     * @param rememberMs how long after its event_time a route is remembered, ms of event time (>= 0)
     * @param unknownWaitMs how long after its label_time a label waits for its route before it is
     *     emitted as unknown, ms of event time (>= 0)
     * @param shards the number of shards (>= 1); routes must name one in [0, shards)
     * @param metricsGroup the metric group of the counters
     */
    public LabelRouter(long rememberMs, long unknownWaitMs, int shards, String metricsGroup) {
        if (rememberMs < 0 || unknownWaitMs < 0 || shards < 1) {
            throw new IllegalArgumentException("rememberMs and unknownWaitMs must be >= 0, shards >= 1");
        }
        this.rememberMs = rememberMs;
        this.unknownWaitMs = unknownWaitMs;
        this.shards = shards;
        this.metricsGroup = metricsGroup;
    }

    /**
     * The key of both inputs: the txn_id, i.e. the bytes before the first {@code '\t'} decoded as
     * UTF-8 (the whole line if it has no tab: it is unreadable then, but must still have a key).
     */
    public static KeySelector<byte[], String> txnIdKey() {
        return new TxnIdKey();
    }

    private static final class TxnIdKey implements KeySelector<byte[], String> {
        private static final long serialVersionUID = 1L;

        @Override
        public String getKey(byte[] line) {
            int tab = indexOfTab(line);
            return new String(line, 0, tab < 0 ? line.length : tab, StandardCharsets.UTF_8);
        }
    }

    /**
     * The router as the operator to run: Flink's keyed co-process operator, which also moves a
     * restored version-1 state into the current layout when it opens ({@link #migrateVersion1}).
     * Its input keys: {@link #txnIdKey()} on both.
     */
    public static KeyedCoProcessOperator<String, byte[], byte[], byte[]> operator(
            long rememberMs, long unknownWaitMs, int shards, String metricsGroup) {
        return new Operator(new LabelRouter(rememberMs, unknownWaitMs, shards, metricsGroup));
    }

    private static final class Operator extends KeyedCoProcessOperator<String, byte[], byte[], byte[]> {
        private static final long serialVersionUID = 1L;

        Operator(LabelRouter router) {
            super(router);
        }

        @Override
        public void open() throws Exception {
            super.open();
            Version1 old = new Version1();
            ((LabelRouter) getUserFunction()).migrateVersion1(old, getKeyedStateBackend());
        }

        /** The version-1 states, bound to the operator's current key. */
        private final class Version1 {
            final ValueState<Tuple3<Integer, Long, String>> route;
            final ValueState<String> history;
            final ListState<byte[]> held;

            Version1() throws Exception {
                route = getPartitionedState(VoidNamespace.INSTANCE, VoidNamespaceSerializer.INSTANCE, ROUTE_V1);
                history = getPartitionedState(VoidNamespace.INSTANCE, VoidNamespaceSerializer.INSTANCE, HISTORY_V1);
                held = getPartitionedState(VoidNamespace.INSTANCE, VoidNamespaceSerializer.INSTANCE, HELD_V1);
            }
        }
    }

    // Version 1's states: (shard, event_time, where) once the route came; the history text; the
    // held labels' lines. Declared only to read a restored savepoint of that version.
    private static final ValueStateDescriptor<Tuple3<Integer, Long, String>> ROUTE_V1 =
            new ValueStateDescriptor<>("route", Types.TUPLE(Types.INT, Types.LONG, Types.STRING));
    private static final ValueStateDescriptor<String> HISTORY_V1 = new ValueStateDescriptor<>("history", Types.STRING);
    private static final ListStateDescriptor<byte[]> HELD_V1 =
            new ListStateDescriptor<>("held-labels", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);

    /**
     * Moves every txn_id's version-1 state (route, history, held labels) into one {@link Entry}
     * and clears it. Its timers need nothing: they are kept per txn_id at the same times, and
     * {@link #onTimer} reads the entry. Nothing to do for a fresh start or a current-layout restore.
     */
    private void migrateVersion1(Operator.Version1 old, KeyedStateBackend<String> backend) throws Exception {
        // Collected first: a state's keys cannot be iterated while the state changes. Each stream
        // is closed: with RocksDB it holds a native iterator.
        Set<String> keys = new LinkedHashSet<>();
        for (String state : List.of(ROUTE_V1.getName(), HELD_V1.getName())) {
            try (Stream<String> stateKeys = backend.getKeys(state, VoidNamespace.INSTANCE)) {
                stateKeys.forEach(keys::add);
            }
        }
        for (String key : keys) {
            backend.setCurrentKey(key);
            Tuple3<Integer, Long, String> route = old.route.value();
            if (route != null) {
                String history = old.history.value();
                entryState.update(Entry.route(route.f0, route.f1, route.f2, history == null ? "" : history));
            } else {
                List<byte[]> held = new ArrayList<>();
                Iterable<byte[]> lines = old.held.get();
                if (lines != null) {
                    lines.forEach(held::add);
                }
                if (!held.isEmpty()) {
                    entryState.update(Entry.held(held));
                }
            }
            old.route.clear();
            old.history.clear();
            old.held.clear();
        }
    }

    /** Declares the keyed state (one entry per txn_id) and the counters. */
    @Override
    public void open(OpenContext openContext) throws Exception {
        entryState = getRuntimeContext().getState(
                new ValueStateDescriptor<>("entry", PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO));
        var metrics = getRuntimeContext().getMetricGroup().addGroup(metricsGroup);
        duplicateTxnIds = metrics.counter("duplicate_txn_ids");
        unlabelledTransactions = metrics.counter("unlabelled_transactions");
        labelsHeldUnknown = metrics.counter("labels_held_unknown");
    }

    /** A route: remembers it and forwards the labels held for it; a second one is ignored. */
    @Override
    public void processElement1(byte[] line, Context ctx, Collector<byte[]> out) throws Exception {
        Route route;
        try {
            route = Route.parse(line, shards);
        } catch (UnreadableLine e) {
            ctx.output(UNREADABLE, unreadable(e.getMessage(), line));
            return;
        }
        byte[] entry = entryState.value();
        if (Entry.isRoute(entry)) {
            duplicateTxnIds.inc();
            return;
        }
        ctx.timerService().registerEventTimeTimer(plus(route.eventTime, rememberMs));
        StringBuilder history = new StringBuilder();
        if (route.inlineLabel != NO_LABEL) {
            appendToHistory(history, route.inlineLabel, route.eventTime);
        }
        if (entry != null) {
            for (byte[] heldLine : Entry.heldLines(entry)) {
                // Parsed when it came, so it parses now.
                forward(Label.parse(heldLine), route.shard, route.eventTime, route.where, history, out);
            }
        }
        entryState.update(Entry.route(route.shard, route.eventTime, route.where, history.toString()));
    }

    /** A label: forwarded if its route is known, held for it otherwise. */
    @Override
    public void processElement2(byte[] line, Context ctx, Collector<byte[]> out) throws Exception {
        Label label;
        try {
            label = Label.parse(line);
        } catch (UnreadableLine e) {
            ctx.output(UNREADABLE, unreadable(e.getMessage(), line));
            return;
        }
        byte[] entry = entryState.value();
        if (!Entry.isRoute(entry)) {
            List<byte[]> held = entry == null ? new ArrayList<>() : Entry.heldLines(entry);
            held.add(line);
            entryState.update(Entry.held(held));
            ctx.timerService().registerEventTimeTimer(plus(label.labelTime, unknownWaitMs));
            return;
        }
        Entry.Route route = Entry.readRoute(entry);
        StringBuilder history = new StringBuilder(route.history);
        forward(label, route.shard, route.eventTime, route.where, history, out);
        entryState.update(Entry.route(route.shard, route.eventTime, route.where, history.toString()));
    }

    /**
     * Forgets the route once the watermark reaches {@code event_time + rememberMs}; while no route is
     * known, emits as unknown every held label whose wait is over, in arrival order. A timer fires
     * for each of these times, and also for times that no longer matter (a held label forwarded
     * since): then it does nothing.
     */
    @Override
    public void onTimer(long time, OnTimerContext ctx, Collector<byte[]> out) throws Exception {
        byte[] entry = entryState.value();
        if (entry == null) {
            return;
        }
        if (Entry.isRoute(entry)) {
            Entry.Route route = Entry.readRoute(entry);
            if (time >= plus(route.eventTime, rememberMs)) {
                if (route.history.isEmpty()) {
                    unlabelledTransactions.inc();
                }
                entryState.clear();
            }
            return;
        }
        List<byte[]> stillHeld = new ArrayList<>();
        boolean emitted = false;
        for (byte[] heldLine : Entry.heldLines(entry)) {
            Label label = Label.parse(heldLine);
            if (plus(label.labelTime, unknownWaitMs) <= time) {
                out.collect(unknownLine(label));
                labelsHeldUnknown.inc();
                emitted = true;
            } else {
                stillHeld.add(heldLine);
            }
        }
        if (stillHeld.isEmpty()) {
            entryState.clear();
        } else if (emitted) {
            entryState.update(Entry.held(stillHeld));
        }
    }

    /** Emits {@code label} as a label of the transaction routed to {@code shard}, then adds it to {@code history}. */
    private static void forward(Label label, int shard, long eventTime, String where, StringBuilder history,
                                Collector<byte[]> out) {
        StringBuilder line = new StringBuilder(
                64 + label.txnId.length() + label.source.length() + history.length() + where.length());
        line.append(shard).append("\tlabel\t").append(label.txnId).append('\t').append(eventTime).append('\t')
                .append(label.isFraud).append('\t').append(label.labelTime).append('\t').append(label.source)
                .append('\t').append(history).append('\t').append(where);
        out.collect(line.toString().getBytes(StandardCharsets.UTF_8));
        appendToHistory(history, label.isFraud, label.labelTime);
    }

    private byte[] unknownLine(Label label) {
        StringBuilder line = new StringBuilder(64 + label.txnId.length() + label.source.length());
        line.append(Math.floorMod(label.txnId.hashCode(), shards)).append("\tunknown\t").append(label.txnId)
                .append("\t-1\t").append(label.isFraud).append('\t').append(label.labelTime).append('\t')
                .append(label.source).append("\t\t");
        return line.toString().getBytes(StandardCharsets.UTF_8);
    }

    private static void appendToHistory(StringBuilder history, int isFraud, long time) {
        if (history.length() > 0) {
            history.append(',');
        }
        history.append(isFraud).append(':').append(time);
    }

    /** The dead letter of an unreadable line: the line as its raw text, so what upstream wrote can be looked at. */
    private static byte[] unreadable(String reason, byte[] line) throws Exception {
        ObjectNode letter = JSON.createObjectNode();
        letter.put("schema_version", 1);
        letter.put("raw", new String(line, StandardCharsets.UTF_8));
        letter.put("stage", "label-route");
        // A reason quotes the bad field; keep it one line whatever the field holds.
        letter.put("reason", reason.replace('\n', ' ').replace('\r', ' '));
        return JSON.writeValueAsBytes(letter);
    }

    /** {@code time + delay}, at most Long.MAX_VALUE: a timer never wraps around to the past. */
    private static long plus(long time, long delay) {
        long sum = time + delay;
        return sum < time ? Long.MAX_VALUE : sum;
    }

    private static int indexOfTab(byte[] line) {
        for (int i = 0; i < line.length; i++) {
            if (line[i] == '\t') {
                return i;
            }
        }
        return -1;
    }

    private static String[] fields(byte[] line, String kind, String... layout) throws UnreadableLine {
        String[] fields = new String(line, StandardCharsets.UTF_8).split("\t", -1);
        if (fields.length != layout.length) {
            throw new UnreadableLine(kind + ": " + fields.length + " fields, expected " + layout.length + " ("
                    + String.join(", ", layout) + ")");
        }
        return fields;
    }

    private static long parseTime(String kind, String name, String field) throws UnreadableLine {
        try {
            return Long.parseLong(field);
        } catch (NumberFormatException e) {
            throw new UnreadableLine(kind + ": " + name + " '" + field + "' is not an integer (epoch ms)");
        }
    }

    /** A label's value, exactly "0" or "1"; else unreadable, the reason saying what is {@code allowed}. */
    private static int parseLabel(String kind, String name, String field, String allowed) throws UnreadableLine {
        if (field.equals("0") || field.equals("1")) {
            return field.charAt(0) - '0';
        }
        throw new UnreadableLine(kind + ": " + name + " '" + field + "' is not " + allowed);
    }

    /**
     * A txn_id's state as bytes: either its route, {@code 'R'}, shard (int), event_time (long), the
     * length of {@code where} in bytes (int), {@code where} and the history (UTF-8: the output's
     * history field, "" for none); or the labels held for it, {@code 'H'}, then per label its
     * line's length (int) and the line, in arrival order.
     */
    static final class Entry {
        private static final byte ROUTE = 'R';
        private static final byte HELD = 'H';

        /** A route entry, decoded. */
        static final class Route {
            final int shard;
            final long eventTime;
            final String where;
            final String history;

            Route(int shard, long eventTime, String where, String history) {
                this.shard = shard;
                this.eventTime = eventTime;
                this.where = where;
                this.history = history;
            }
        }

        static boolean isRoute(byte[] entry) {
            return entry != null && entry[0] == ROUTE;
        }

        static byte[] route(int shard, long eventTime, String where, String history) {
            byte[] whereBytes = where.getBytes(StandardCharsets.UTF_8);
            byte[] historyBytes = history.getBytes(StandardCharsets.UTF_8);
            return ByteBuffer.allocate(1 + 4 + 8 + 4 + whereBytes.length + historyBytes.length)
                    .put(ROUTE).putInt(shard).putLong(eventTime).putInt(whereBytes.length).put(whereBytes)
                    .put(historyBytes).array();
        }

        static Route readRoute(byte[] entry) {
            ByteBuffer buffer = ByteBuffer.wrap(entry, 1, entry.length - 1);
            int shard = buffer.getInt();
            long eventTime = buffer.getLong();
            int whereLength = buffer.getInt();
            int whereAt = buffer.position();
            String where = new String(entry, whereAt, whereLength, StandardCharsets.UTF_8);
            int historyAt = whereAt + whereLength;
            return new Route(shard, eventTime, where,
                    new String(entry, historyAt, entry.length - historyAt, StandardCharsets.UTF_8));
        }

        static byte[] held(List<byte[]> lines) {
            int size = 1;
            for (byte[] line : lines) {
                size += 4 + line.length;
            }
            ByteBuffer buffer = ByteBuffer.allocate(size).put(HELD);
            for (byte[] line : lines) {
                buffer.putInt(line.length).put(line);
            }
            return buffer.array();
        }

        /** The held labels' lines of a held entry, in arrival order (a list that may be changed). */
        static List<byte[]> heldLines(byte[] entry) {
            List<byte[]> lines = new ArrayList<>();
            ByteBuffer buffer = ByteBuffer.wrap(entry, 1, entry.length - 1);
            while (buffer.hasRemaining()) {
                byte[] line = new byte[buffer.getInt()];
                buffer.get(line);
                lines.add(line);
            }
            return lines;
        }
    }

    /** A route line: {@code txn_id \t shard \t event_time \t inline_label \t where}. */
    private static final class Route {
        final int shard;
        final long eventTime;
        final int inlineLabel;
        final String where;

        private Route(int shard, long eventTime, int inlineLabel, String where) {
            this.shard = shard;
            this.eventTime = eventTime;
            this.inlineLabel = inlineLabel;
            this.where = where;
        }

        static Route parse(byte[] line, int shards) throws UnreadableLine {
            String[] fields = fields(line, "route", "txn_id", "shard", "event_time", "inline_label", "where");
            int shard;
            try {
                shard = Integer.parseInt(fields[1]);
            } catch (NumberFormatException e) {
                shard = -1;
            }
            if (shard < 0 || shard >= shards) {
                throw new UnreadableLine("route: shard '" + fields[1] + "' is not an integer in [0, " + shards + ")");
            }
            long eventTime = parseTime("route", "event_time", fields[2]);
            if (fields[3].equals("-1")) {
                return new Route(shard, eventTime, NO_LABEL, fields[4]);
            }
            return new Route(shard, eventTime, parseLabel("route", "inline_label", fields[3], "-1, 0 or 1"), fields[4]);
        }
    }

    /** A label line: {@code txn_id \t is_fraud \t label_time \t source}. */
    private static final class Label {
        final String txnId;
        final int isFraud;
        final long labelTime;
        final String source;

        private Label(String txnId, int isFraud, long labelTime, String source) {
            this.txnId = txnId;
            this.isFraud = isFraud;
            this.labelTime = labelTime;
            this.source = source;
        }

        static Label parse(byte[] line) throws UnreadableLine {
            String[] fields = fields(line, "label", "txn_id", "is_fraud", "label_time", "source");
            return new Label(fields[0], parseLabel("label", "is_fraud", fields[1], "0 or 1"),
                    parseTime("label", "label_time", fields[2]), fields[3]);
        }
    }

    /** Why a line does not parse; thrown often enough on a bad upstream that it skips the stack trace. */
    private static final class UnreadableLine extends Exception {
        private static final long serialVersionUID = 1L;

        UnreadableLine(String reason) {
            super(reason, null, false, false);
        }
    }
}
