"""The models of the shards a scoring subtask owns: keyed state, and the in-memory copy it scores with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from pyflink.common import Types
from pyflink.datastream import RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from udfs.scoring import ModelScorer
from udfs.wire import END_OF_INPUT, keyed_lines_bundle

if TYPE_CHECKING:
    from udfs.compiled_model import ModelTable

# The end-of-input snapshots of a shard's models leave in bundles of at most this many lines.
FINAL_SNAPSHOTS_PER_BUNDLE = 1000


class ShardModels:
    """The models of one scoring subtask's shards (the shard is the key of the scoring operators).

    Keyed map state (model key -> model bytes) is the only record of a model. The worker also keeps
    each shard's models in memory, as a table of arrays (ModelTable), because reading state key by
    key costs a round trip to the JVM per record in process mode. That copy is loaded whole from
    state the first time the worker sees the shard (after a start or a restore) and every change is
    written through (`write_through`), so it always equals the state. Call the methods that take a
    shard while that shard is the operator's current key.
    """

    def __init__(self, scorer: ModelScorer):
        self.scorer = scorer
        self.state = None
        self.tables: dict[int, ModelTable] = {}
        self.final_snapshots_timed: set[int] = set()  # shards whose END_OF_INPUT timer this worker set

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_map_state(
            # Pickled bytes, as since version 1 of the model state, so that a savepoint of an
            # earlier release restores (its version-1 models are read, and written as version 2).
            # Not PRIMITIVE_ARRAY(BYTE): thread mode would convert its state values byte by byte.
            MapStateDescriptor("models", Types.STRING(), Types.PICKLED_BYTE_ARRAY()))
        self.tables = {}
        self.final_snapshots_timed = set()

    def table(self, shard: int) -> ModelTable:
        """The shard's models, loaded from state the first time this worker needs them."""
        table = self.tables.get(shard)
        if table is None:
            table = self.scorer.new_table()
            for key, data in self.state.items():
                table.add(key, data)
            self.tables[shard] = table
        return table

    def write_through(self, table: ModelTable, rows) -> None:
        """Writes the models at `rows` of the current shard's `table` to state."""
        keys = table.keys
        for row in rows:  # not put_all: PyFlink 2.2's is broken in both modes
            self.state.put(keys[row], table.to_bytes(row))

    def time_final_snapshots(self, shard: int, ctx) -> None:
        """Sets the shard's END_OF_INPUT timer (its final snapshots), once per shard and worker
        (Flink keeps one timer per key and time, and restores it with the state). Called wherever a
        shard's models are used: labels can reach a shard before its first batch does."""
        if shard not in self.final_snapshots_timed:
            ctx.timer_service().register_event_time_timer(END_OF_INPUT)
            self.final_snapshots_timed.add(shard)

    def final_snapshots(self, shard: int, keyed_output: bool) -> Iterator[bytes]:
        """Bundles of the snapshot lines of every model of the shard (udfs.scoring.ModelScorer.snapshot).
        In bundles of a bounded size: a shard of 100k keys would otherwise be one bundle of hundreds
        of MB, held whole by the worker and again by the JVM."""
        table = self.table(shard)
        keys = table.keys
        for start in range(0, len(keys), FINAL_SNAPSHOTS_PER_BUNDLE):
            rows = range(start, min(start + FINAL_SNAPSHOTS_PER_BUNDLE, len(keys)))
            yield keyed_lines_bundle([self.scorer.snapshot(table.key_model(row), keys[row]) for row in rows],
                                     keyed_output)

    def key_count(self) -> int:
        """Model keys in this worker's tables: a shard's keys count from its first use after a start
        or restore, when its table is loaded from state."""
        return sum(len(table) for table in self.tables.values())
