package riskstream.flink;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.types.Row;

/**
 * A (shard, bytes) pair as {@code Row(shard, pair)}: the element a PyFlink keyed stream is made of,
 * its key first and then the value, which PyFlink keys with the Java {@code KeyByKeySelector}
 * (field 0). PyFlink's {@code key_by} makes that row in a Python operator, a hop of every element
 * into Python and back; here it is made where the pair is (streaming/job/java_operators.py,
 * {@code by_shard}).
 */
public final class ShardKeyed implements MapFunction<Tuple2<Integer, byte[]>, Row> {
    private static final long serialVersionUID = 1L;

    @Override
    public Row map(Tuple2<Integer, byte[]> shardBatch) {
        return Row.of(shardBatch.f0, shardBatch);
    }
}
