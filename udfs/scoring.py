"""Scoring and learning (pure Python, no Flink): `ModelScorer.score_columns` scores a shard's
`RecordBatch` with its keys' models and learns from its labelled records, in arrival order, in
compiled code (udfs/compiled_model.py), and writes the scores and snapshots as JSON lines.

The reference it is held to, one record at a time on a `KeyModel` (udfs/model.py), is in the
tests (tests/reference/pipeline.py): with plain SGD both give exactly the same scores and models,
with AdaGrad and FTRL the same to rounding (1e-12).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
import orjson

from udfs.cleaning import SCHEMA_VERSION
from udfs.global_columns import arrays_of, standardized_entries
from udfs.global_model import GlobalModel
from udfs.model import KeyModel, Optimizer, Sgd
from udfs.records import KeyedLine, ModelInput, ScoreContext
from udfs.wire import RecordBatch

if TYPE_CHECKING:
    from udfs.compiled_model import ModelTable
    from udfs.feature_log import FeatureLog


class AssessedBatch(NamedTuple):
    """What the models made of a batch, per record as arrays (its probability of fraud before
    learning, the model's updates before learning, whether it learned, its top reasons), the
    snapshots taken on the way, and the table rows whose models changed."""

    probability: np.ndarray  # float64, 0..1, before learning
    updates: np.ndarray  # int64, the model's updates before learning
    learned: np.ndarray  # bool
    reason_index: np.ndarray  # int32 (records, top_reasons): feature indices, largest |contribution| first
    reason_value: np.ndarray  # float64 (records, top_reasons): their contributions
    reason_count: np.ndarray  # int8: how many reasons of the row are set
    # float64, one per feature entry (the batch's indices): the values the model saw, standardized
    standardized: np.ndarray
    key_margin: np.ndarray  # float64: the key model's w . x + b each record was scored with
    snapshots: list[KeyedLine]
    changed_rows: list[int]  # every row the batch used (the job writes them to state)


class ModelScorer:
    """Scores each record with its key's model, then learns from it when it has a label."""

    def __init__(self, feature_names: Sequence[str], standardized: Sequence[int], optimizer: Optimizer,
                 snapshot_every: int, top_reasons: int, initial_bias: float = 0.0, blend: str = "key",
                 cold_start: str = "zeros"):
        self.feature_names = tuple(feature_names)
        self.standardized = tuple(standardized)
        self.optimizer = optimizer
        self.snapshot_every = snapshot_every
        self.top_reasons = top_reasons
        self.initial_bias = initial_bias  # a new key's bias (log-odds)
        # With a global model (udfs/prequential.py): model.blend (key, global or sum) and model.cold_start.
        self.blend = blend
        self.cold_start = cold_start

    def start(self, held: GlobalModel | None, cold_start: str) -> tuple[np.ndarray, float] | None:
        """What a new (or reset) key's row starts from, as udfs/prequential.py's `_new_key_model`:
        under blend sum zero weights and bias 0 (the global margin carries the prior); with
        `cold_start` global the held version's weights and bias (`GlobalModel.copy_regression`);
        else None (zero weights, initial_bias)."""
        if held is None:
            return None
        if self.blend == "sum":
            return np.zeros(len(self.feature_names)), 0.0
        if cold_start == "global":
            copy = held.copy_regression()
            return np.asarray(copy.weights, np.float64), copy.bias
        return None

    def new_model(self) -> KeyModel:
        """A new key's model, with the optimizer's accumulators, for one record at a time (the
        tests' reference; bench/loops.py's River baseline uses its standardizer)."""
        key_model = KeyModel(len(self.feature_names), self.standardized, self.initial_bias)
        key_model.model.adopt(self.optimizer)
        return key_model

    def new_table(self) -> ModelTable:
        """An empty table of models for `score_columns`."""
        # Imported here, not with this module: numba takes 0.3 s to import, and only the
        # scoring side needs it (see also streaming/job/pyflink_internals.py).
        from udfs.compiled_model import ModelTable

        return ModelTable(len(self.feature_names), self.standardized, optimizer=self.optimizer,
                          initial_bias=self.initial_bias)

    def score_columns(self, batch: RecordBatch, table: ModelTable, now_ms: int
                      ) -> tuple[list[bytes], list[KeyedLine], list[int]]:
        """Scores and learns from the batch's records in order, in compiled code, as the reference
        (tests/reference/pipeline.py) does one at a time, with the models of `table` (a key not in
        it gets a new model). Returns (score JSON lines as UTF-8, snapshot JSON lines, rows of the table
        the batch used). The job calls `assess_columns` and `score_lines` itself, as it also
        needs the probabilities (for its metrics and analytics)."""
        assessed = self.assess_columns(batch, table)
        return self.score_lines(batch, assessed, now_ms), assessed.snapshots, assessed.changed_rows

    def assess_columns(self, batch: RecordBatch, table: ModelTable, held: GlobalModel | None = None
                       ) -> "AssessedBatch":
        """Standardizes each record's features, scores it and learns from it when it has a label,
        for every record of the batch in order (see `score_columns`), with snapshots.

        `held` (the global version the shard holds for this batch; None without a global model):
        unless blend is global, the key models read the features standardized by its statistics
        (`standardized_entries`), a new key starts as `start` says, and under blend sum the score is
        sigmoid(held's margin + the key's margin) and the key learns from that (udfs/prequential.py)."""
        from udfs.compiled_model import learn_batch

        n = len(batch)
        values, global_view = batch.values, {}
        if held is not None and self.blend != "global":
            table.start = self.start(held, self.cold_start)
            values = standardized_entries(held, np.asarray(batch.indices, np.int64), batch.values)
            global_view["prestandardized"] = True
            if self.blend == "sum":
                global_view["global_weights"] = arrays_of(held).weights
                global_view["global_bias"] = held.regression.bias
        rows_of, add = table.rows, table.add
        rows = np.fromiter((rows_of[key] if key in rows_of else add(key) for key in batch.model_keys), np.int64, n)
        assessed = AssessedBatch(np.empty(n), np.empty(n, np.int64), np.empty(n, np.bool_),
                                 np.zeros((n, self.top_reasons), np.int32), np.zeros((n, self.top_reasons)),
                                 np.zeros(n, np.int8), np.empty(len(batch.values)), np.empty(n), [],
                                 np.unique(rows).tolist())
        position = 0
        while position < n:
            position = learn_batch(
                position, rows, batch.indptr, batch.indices, values, batch.labels, batch.event_times,
                table.weights, table.bias, table.updates, table.rejected, table.last_event_time, table.count,
                table.mean, table.m2, table.positions, table.accumulators, table.optimizer, self.snapshot_every,
                *assessed[:8], **global_view)
            last = position - 1
            if assessed.learned[last] and table.updates[rows[last]] % self.snapshot_every == 0:
                assessed.snapshots.append(self.snapshot(table.key_model(int(rows[last])), batch.model_keys[last]))
        return assessed

    def learn_logged_columns(self, table: ModelTable, logged: Sequence[tuple[FeatureLog, int]],
                             labels: Sequence[int], event_times: Sequence[int]
                             ) -> tuple[list[str], np.ndarray, np.ndarray, list[KeyedLine]]:
        """`ModelTable.learn_logged` for many labels in their order, in one compiled call: label r
        steps the model of its record's key (`logged[r]`: the record's feature log and its row
        there) on the record's logged entries, standardized when it was scored, towards labels[r]
        (0 or 1), its event time event_times[r] (ms) becoming the model's last. Returns (each
        label's model key, each model's updates before its step (int64), whether it stepped (bool:
        False when the guard discarded it), the snapshots of the keys whose update count a step
        made a multiple of snapshot_every, taken right after that step)."""
        from udfs.compiled_model import learn_batch

        n = len(logged)
        model_keys = [log.model_keys[row] for log, row in logged]
        rows = np.fromiter((table.rows[key] for key in model_keys), np.int64, n)
        entries = [log.entries(row) for log, row in logged]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum([len(indices) for indices, _ in entries], out=indptr[1:])
        indices = np.concatenate([indices for indices, _ in entries]).astype(np.int32)
        values = np.concatenate([values for _, values in entries])
        labels_, event_times_ = np.asarray(labels, np.int8), np.asarray(event_times, np.int64)
        updates_before, learned = np.empty(n, np.int64), np.empty(n, np.bool_)
        no_reasons = (np.zeros((n, 0), np.int32), np.zeros((n, 0)), np.zeros(n, np.int8))
        snapshots, position = [], 0
        while position < n:
            position = learn_batch(
                position, rows, indptr, indices, values, labels_, event_times_,
                table.weights, table.bias, table.updates, table.rejected, table.last_event_time, table.count,
                table.mean, table.m2, table.positions, table.accumulators, table.optimizer, self.snapshot_every,
                np.empty(n), updates_before, learned, *no_reasons, np.empty(len(values)), np.empty(n),
                prestandardized=True)
            last = position - 1
            if learned[last] and table.updates[rows[last]] % self.snapshot_every == 0:
                snapshots.append(self.snapshot(table.key_model(int(rows[last])), model_keys[last]))
        return model_keys, updates_before, learned, snapshots

    def score_lines(self, batch: RecordBatch, assessed: "AssessedBatch", now_ms: int) -> list[bytes]:
        """The batch's scores as JSON lines in UTF-8 (README, "Data contracts")."""
        names = self.feature_names
        dumps = orjson.dumps
        return [
            dumps({
                "schema_version": SCHEMA_VERSION,
                "txn_id": txn_id,
                "model_key": key,
                "score": p,
                "label": None if label < 0 else label,
                "event_time": event_time,
                "model_updates": updates,
                "reasons": [{"feature": names[i], "contribution": c} for i, c in zip(indexes[:count], values[:count])],
                "scored_at": now_ms,
                "merchant_category": category,
                "country": country,
                "channel": channel,
                "amount": amount,
                "currency": currency,
                "account": account,
            })
            for txn_id, key, p, label, event_time, updates, indexes, values, count, category, country, channel, amount,
            currency, account in zip(
                batch.txn_ids, batch.model_keys, assessed.probability.tolist(), batch.labels.tolist(),
                batch.event_times.tolist(), assessed.updates.tolist(), assessed.reason_index.tolist(),
                assessed.reason_value.tolist(), assessed.reason_count.tolist(), batch.categories, batch.countries,
                batch.channels, batch.amounts.tolist(), batch.currencies, batch.accounts)
        ]

    def score_next(self, batch: RecordBatch, key_model: KeyModel | None, now_ms: int) -> bytes:
        """The score line (UTF-8 JSON) the job would write for the one record of `batch` if it came
        next to its key's model `key_model` (None: the key has none yet, so a new one, as the job
        starts it): the job's own code (`assess_columns`, `score_lines`) on a table of that one
        model, a copy, so `key_model` does not change. For a job without a global model (the
        only one whose key models read their own standardization)."""
        if len(batch) != 1:
            raise ValueError(f"score_next scores one record, got {len(batch)}")
        table = self.new_table()
        table.add(batch.model_keys[0], None if key_model is None else key_model.to_bytes())
        return self.score_lines(batch, self.assess_columns(batch, table), now_ms)[0]

    def snapshot(self, key_model: KeyModel, model_key: str) -> KeyedLine:
        """The key's model snapshot as one JSON line, keyed by the model key."""
        return KeyedLine(orjson.dumps(key_model.to_snapshot(model_key, self.feature_names)).decode("utf-8"), model_key)


def compile_model_code() -> None:
    """Compiles the model's batch code, or loads it from numba's on-disk cache, for both forms a
    batch takes (read from bytes between operators, or built in place), so that the workers of a
    job find it cached. About 2 s the first time after the code changed, 0.1 s after that."""
    scorer = ModelScorer(("x",), (0,), Sgd(0.1), snapshot_every=1, top_reasons=1)
    batch = RecordBatch.of([ModelInput("k", "t", 0, 1, [0], [1.0], ScoreContext("fuel", "US", "web", 1.0, "USD", "a"))])
    for form in (batch, RecordBatch.from_bytes(batch.to_bytes())):
        scorer.score_columns(form, scorer.new_table(), 0)
