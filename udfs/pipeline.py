"""The steps of the scoring job, composed from `cleaning`, `features` and `model`.

One record at a time (the reference): `TransactionReader.read_envelope` runs before the stream is
keyed: source envelope -> decode -> parse -> clean -> features, giving a `ModelInput` record or a
dead letter; `ModelScorer.score_and_learn` runs on the key's `KeyModel`: standardize, score, learn,
and emit the score and, every `snapshot_every` updates, a snapshot.

A bundle at a time (what the job runs): `TransactionReader.read_bundle_columns` gives each shard a
columnar `RecordBatch` and the dead letters; `ModelScorer.score_columns` scores and learns from a
batch with the compiled model (udfs/compiled_model.py). The unit tests hold both paths to the same
results. Nothing here touches Flink; the Flink wrappers only call these.
"""
from __future__ import annotations

import hashlib
import re
import struct
import zlib
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np
import orjson

from udfs.analytics import NO_WATERMARK
from udfs.batch_cleaning import clean_batch
from udfs.cleaning import SCHEMA_VERSION, CleaningRules, Rejected, clean, decode, parse, redact_account_id
from udfs.features import EncodedBatch, FeatureEncoder
from udfs.model import KeyModel, Sgd

if TYPE_CHECKING:
    from udfs.compiled_model import ModelTable


_ESCAPE = re.compile(r"\\([\\tn])")
_UNESCAPED = {"\\": "\\", "t": "\t", "n": "\n"}


class KeyedLine(str):
    """An output's JSON line that also carries the key of what it describes (a snapshot's model
    key; a dead letter's txn_id, None when unknown), so that a Kafka sink's message key needs no
    parsing of the line."""

    key: str | None

    def __new__(cls, line: str, key: str | None) -> "KeyedLine":
        keyed = super().__new__(cls, line)
        keyed.key = key
        return keyed


class DeadLetter(KeyedLine):
    """A dead letter's JSON line, keyed by its txn_id, that also carries its `stage`, so that the
    job counts dead letters per stage (udfs/live_metrics.py) without parsing the line."""

    stage: str

    def __new__(cls, line: str, key: str | None, stage: str) -> "DeadLetter":
        letter = super().__new__(cls, line, key)
        letter.stage = stage
        return letter


class ScoreContext(NamedTuple):
    """What a score carries of its transaction besides the model's output, for analysts to group by."""

    merchant_category: str
    country: str
    channel: str
    amount: float
    currency: str
    account: str  # the account's pseudonym

    @classmethod
    def of(cls, txn: dict[str, Any]) -> "ScoreContext":
        """The context of a cleaned transaction."""
        return cls(txn["merchant_category"], txn["country"], txn["channel"], txn["amount"], txn["currency"],
                   txn["account_id"])


class ModelInput(NamedTuple):
    """A cleaned record ready for its key's model; (indices, values) is its sparse feature vector."""

    model_key: str
    txn_id: str
    event_time: int
    label: int | None
    indices: list[int]
    values: list[float]
    context: ScoreContext


class RecordBatch(NamedTuple):
    """Cleaned records ready for their keys' models, as columns, in arrival order: record r has
    model key `model_keys[r]`, and its sparse feature vector is indices/values[indptr[r]:indptr[r+1]]."""

    model_keys: list[str]
    txn_ids: list[str]
    event_times: np.ndarray  # int64, epoch ms
    labels: np.ndarray  # int8: 0, 1, or -1 for no label
    indptr: np.ndarray  # int64, one more than there are records
    indices: np.ndarray  # int32 feature indices
    values: np.ndarray  # float64
    # The records' ScoreContext, field by field.
    categories: list[str]
    countries: list[str]
    channels: list[str]
    amounts: np.ndarray  # float64
    currencies: list[str]
    accounts: list[str]
    # int64: each record's source split's watermark at its arrival (SplitWatermarkTagger.java), for
    # windowed analytics; NO_WATERMARK when not tracked.
    source_watermarks: np.ndarray

    def __len__(self) -> int:
        return len(self.model_keys)

    def without_labels(self) -> "RecordBatch":
        """The batch with every label -1 (none): what learning sees of it in labels.mode stream.
        (Not `_replace`: NamedTuple's checks the field count with `len`, which counts records here.)"""
        fields = list(self)
        fields[RecordBatch._fields.index("labels")] = np.full(len(self), -1, np.int8)
        return RecordBatch(*fields)

    @classmethod
    def of(cls, records: Sequence[ModelInput]) -> "RecordBatch":
        """The batch of `ModelInput` records (the reference's form)."""
        lengths = [len(record.indices) for record in records]
        contexts = [record.context for record in records]
        return cls([record.model_key for record in records], [record.txn_id for record in records],
                   np.array([record.event_time for record in records], np.int64),
                   np.array([-1 if record.label is None else record.label for record in records], np.int8),
                   np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int64),
                   np.array([i for record in records for i in record.indices], np.int32),
                   np.array([v for record in records for v in record.values], np.float64),
                   [c.merchant_category for c in contexts], [c.country for c in contexts], [c.channel for c in contexts],
                   np.array([c.amount for c in contexts], np.float64), [c.currency for c in contexts],
                   [c.account for c in contexts], np.full(len(records), NO_WATERMARK, np.int64))

    @classmethod
    def of_encoded(cls, txns: Sequence[dict[str, Any]], encoded: EncodedBatch, model_key_field: str,
                   source_watermarks: np.ndarray | None = None) -> "RecordBatch":
        """The batch of the cleaned transactions `txns` that `encoded` (their features) kept;
        `source_watermarks`, when given, holds each of `txns`' source watermark."""
        kept = [txns[i] for i in encoded.rows.tolist()]
        watermarks = (np.full(len(kept), NO_WATERMARK, np.int64) if source_watermarks is None
                      else source_watermarks[encoded.rows])
        return cls([txn[model_key_field] for txn in kept], [txn["txn_id"] for txn in kept],
                   np.array([txn["event_time"] for txn in kept], np.int64),
                   np.array([-1 if txn["is_fraud"] is None else txn["is_fraud"] for txn in kept], np.int8),
                   encoded.indptr, encoded.indices, encoded.values,
                   [txn["merchant_category"] for txn in kept], [txn["country"] for txn in kept],
                   [txn["channel"] for txn in kept],
                   np.array([txn["amount"] for txn in kept], np.float64), [txn["currency"] for txn in kept],
                   [txn["account_id"] for txn in kept], watermarks)

    def records(self) -> list[ModelInput]:
        """The batch as `ModelInput` records."""
        indptr, indices, values = self.indptr.tolist(), self.indices.tolist(), self.values.tolist()
        contexts = map(ScoreContext, self.categories, self.countries, self.channels, self.amounts.tolist(),
                       self.currencies, self.accounts)
        return [ModelInput(key, txn_id, event_time, None if label < 0 else label,
                           indices[indptr[r]:indptr[r + 1]], values[indptr[r]:indptr[r + 1]], context)
                for r, (key, txn_id, event_time, label, context)
                in enumerate(zip(self.model_keys, self.txn_ids, self.event_times.tolist(), self.labels.tolist(),
                                 contexts))]

    def take(self, rows: np.ndarray) -> "RecordBatch":
        """The records at positions `rows` (ascending), as a batch."""
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # Position of each kept entry: its row's start in this batch plus its place in the row.
        entries = np.repeat(self.indptr[rows] - indptr[:-1], lengths) + np.arange(indptr[-1])
        positions = rows.tolist()
        return RecordBatch([self.model_keys[r] for r in positions], [self.txn_ids[r] for r in positions],
                           self.event_times[rows], self.labels[rows], indptr, self.indices[entries],
                           self.values[entries], [self.categories[r] for r in positions],
                           [self.countries[r] for r in positions],
                           [self.channels[r] for r in positions], self.amounts[rows],
                           [self.currencies[r] for r in positions], [self.accounts[r] for r in positions],
                           self.source_watermarks[rows])

    # Packed for the hop between operators: a header (records, entries, text bytes), the arrays,
    # then the string columns as newline-separated UTF-8 (cleaning collapses every whitespace, so
    # none holds a newline).
    _HEADER = struct.Struct("<qqq")

    def to_bytes(self) -> bytes:
        text = "\n".join(self.model_keys + self.txn_ids + self.categories + self.countries + self.channels
                         + self.currencies + self.accounts).encode("utf-8", "surrogatepass")
        return b"".join((self._HEADER.pack(len(self), len(self.indices), len(text)), self.event_times.tobytes(),
                         self.indptr.tobytes(), self.values.tobytes(), self.amounts.tobytes(),
                         self.source_watermarks.tobytes(),
                         self.indices.tobytes(), self.labels.tobytes(), text))

    @classmethod
    def from_bytes(cls, data: bytes) -> "RecordBatch":
        n, nnz, text_bytes = cls._HEADER.unpack_from(data)
        offset = cls._HEADER.size
        arrays = []
        for dtype, count in ((np.int64, n), (np.int64, n + 1), (np.float64, nnz), (np.float64, n), (np.int64, n),
                             (np.int32, nnz), (np.int8, n)):
            arrays.append(np.frombuffer(data, dtype, count, offset))
            offset += count * np.dtype(dtype).itemsize
        event_times, indptr, values, amounts, source_watermarks, indices, labels = arrays
        strings = data[offset:offset + text_bytes].decode("utf-8", "surrogatepass").split("\n") if n else []
        keys, txn_ids, categories, countries, channels, currencies, accounts = (
            strings[i * n:(i + 1) * n] for i in range(7))
        return cls(keys, txn_ids, event_times, labels, indptr, indices, values, categories, countries, channels,
                   amounts, currencies, accounts, source_watermarks)


# sequence number (-1: none), bytes of the stream's name, bytes of the feature log id (-1: none for both)
_SHARD_BATCH_HEADER = struct.Struct("<qii")


def pack_shard_batch(stream: str | None, seq: int | None, batch: RecordBatch, log_id: str | None = None) -> bytes:
    """A shard's batch with the number of the bundle it came from (see udfs/ordering.py) and, when
    labels come later on their own stream, the id under which its features are logged
    (udfs.labels.FeatureLog), as bytes."""
    name = b"" if stream is None else stream.encode("utf-8")
    log = b"" if log_id is None else log_id.encode("utf-8")
    header = _SHARD_BATCH_HEADER.pack(-1 if seq is None else seq, -1 if stream is None else len(name),
                                      -1 if log_id is None else len(log))
    return header + name + log + batch.to_bytes()


class ShardBatch(NamedTuple):
    stream: str | None
    seq: int | None
    batch: RecordBatch
    log_id: str | None


def unpack_shard_batch(data: bytes) -> ShardBatch:
    """`pack_shard_batch`'s arguments, from its bytes."""
    seq, name_bytes, log_bytes = _SHARD_BATCH_HEADER.unpack_from(data)
    name_end = _SHARD_BATCH_HEADER.size + max(name_bytes, 0)
    log_end = name_end + max(log_bytes, 0)
    stream = None if name_bytes < 0 else data[_SHARD_BATCH_HEADER.size:name_end].decode("utf-8")
    log_id = None if log_bytes < 0 else data[name_end:log_end].decode("utf-8")
    return ShardBatch(stream, None if seq < 0 else seq, RecordBatch.from_bytes(data[log_end:]), log_id)


def shard_of(model_key: str, shards: int) -> int:
    """The shard (0..shards-1) of a model key: crc32, so it is the same in every process and run."""
    return zlib.crc32(model_key.encode("utf-8")) % shards


def split_envelope(envelope: str) -> tuple[dict[str, Any], bytes]:
    """(source coordinates, raw bytes) of a record as the source delivered it.

    The file source sends `file:<line>:<path>\\t<payload>` with the payload's bytes as ISO-8859-1
    characters (see SourceTaggedLineFormat.java), the Kafka source
    `kafka:<partition>:<offset>:<topic>\\t<payload>` likewise with backslash and newline escaped
    (see TaggedKafkaDeserializer.java); anything else is kept whole as the payload.
    """
    tag, separator, payload = envelope.partition("\t")
    if separator and tag.startswith("kafka:"):
        _, partition, offset, topic = (tag.split(":", 3) + ["", "", ""])[:4]
        if partition.isdigit() and offset.isdigit():
            if "\\" in payload:  # backslash and newline were escaped for bundling
                payload = _ESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], payload)
            source = {"topic": topic, "partition": int(partition), "offset": int(offset)}
            return source, payload.encode("latin-1")
    if separator and tag.startswith("file:"):
        _, line, path = (tag.split(":", 2) + ["", ""])[:3]
        if line.isdigit():
            path = _ESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], path)
            return {"file": path, "line": int(line)}, payload.encode("latin-1")
    return {}, envelope.encode("utf-8")


def split_watermark_tag(envelope: str) -> tuple[int, str]:
    """(the split's watermark in epoch ms, or NO_WATERMARK; the envelope) of a record that
    SplitWatermarkTagger.java tagged as `@<watermark>\t<envelope>`; an untagged envelope (which
    the job never sends) has NO_WATERMARK."""
    if envelope.startswith("@"):
        watermark, separator, rest = envelope.partition("\t")
        try:
            return int(watermark[1:]), rest
        except ValueError:
            pass
    return NO_WATERMARK, envelope


def envelope_payload(envelope: str) -> bytes:
    """`split_envelope(envelope)[1]`, without building the source coordinates for the file source's
    envelopes (they are only needed for a dead letter)."""
    tag, separator, payload = envelope.partition("\t")
    if separator and tag.startswith("file:") and tag[5:].partition(":")[0].isdigit():
        return payload.encode("latin-1")
    return split_envelope(envelope)[1]


class TransactionReader:
    """Decode, parse, clean and encode one record; see `read`."""

    def __init__(self, rules: CleaningRules, encoder: FeatureEncoder, model_key_field: str,
                 dead_letter_raw_bytes: int):
        self.rules = rules
        self.encoder = encoder
        self.model_key_field = model_key_field
        self.dead_letter_raw_bytes = dead_letter_raw_bytes

    def read_envelope(self, envelope: str, now_ms: int) -> ModelInput | KeyedLine:
        """The `ModelInput` record, or a dead letter as a JSON line (README, "Data contracts")."""
        source, raw = split_envelope(envelope)
        return self.read(raw, source, now_ms)

    def read(self, raw: bytes, source: dict[str, Any], now_ms: int) -> ModelInput | KeyedLine:
        """`read_envelope` for a record's bytes and its source coordinates."""
        try:
            txn = clean(parse(decode(raw, self.rules.max_record_bytes)), self.rules)
            if txn[self.model_key_field] is None:
                raise Rejected("clean", f"{self.model_key_field} is missing (it is the model key)", txn["txn_id"])
            indices, values = self.encoder.encode(txn)
        except Rejected as rejected:
            return self.dead_letter(raw, rejected, source, now_ms)
        return ModelInput(txn[self.model_key_field], txn["txn_id"], txn["event_time"], txn["is_fraud"], indices, values,
                          ScoreContext.of(txn))

    def read_bundle(self, bundle: str, shards: int, now_ms: int) -> tuple[dict[int, list[ModelInput]], list[KeyedLine]]:
        """Reads every record of a bundle (envelopes joined by newlines, in arrival order).

        Returns the model inputs grouped by `shard_of` their model key, each group in arrival
        order, and the dead letters as JSON lines."""
        by_shard: dict[int, list[ModelInput]] = {}
        dead_letters: list[KeyedLine] = []
        for envelope in bundle.split("\n"):
            result = self.read_envelope(envelope, now_ms)
            if isinstance(result, KeyedLine):
                dead_letters.append(result)
            else:
                by_shard.setdefault(shard_of(result.model_key, shards), []).append(result)
        return by_shard, dead_letters

    def read_bundle_columns(self, bundle: str, shards: int, now_ms: int, watermarked: bool = False
                            ) -> tuple[dict[int, RecordBatch], list[DeadLetter]]:
        """`read_bundle`, batch by batch: the same records and dead letters (in arrival order),
        with each shard's records as one `RecordBatch`. `watermarked`: each envelope starts with
        its split's watermark (see `split_watermark_tag`), which the batches carry."""
        envelopes = bundle.split("\n")
        watermarks = None
        if watermarked:
            tagged = [split_watermark_tag(envelope) for envelope in envelopes]
            watermarks = np.fromiter((watermark for watermark, _ in tagged), np.int64, len(tagged))
            envelopes = [envelope for _, envelope in tagged]
        return self.read_columns([envelope_payload(envelope) for envelope in envelopes],
                                 lambda position: split_envelope(envelopes[position])[0], shards, now_ms, watermarks)

    def read_columns(self, raws: Sequence[bytes], source_of: Callable[[int], dict[str, Any]], shards: int,
                     now_ms: int, source_watermarks: np.ndarray | None = None
                     ) -> tuple[dict[int, RecordBatch], list[DeadLetter]]:
        """Reads records' bytes as `read` does one at a time, but over the whole batch at once
        (`clean_batch`, `FeatureEncoder.encode_batch`): returns each shard's records as one
        `RecordBatch` in arrival order, and the dead letters in arrival order; `source_of(i)` gives
        the source coordinates of record i, asked only for dead letters; `source_watermarks[i]` is
        record i's source watermark (none: NO_WATERMARK)."""
        rejections: list[tuple[int, Rejected]] = []
        cleaned: list[dict[str, Any]] = []
        cleaned_positions: list[int] = []
        key_field = self.model_key_field
        for position, txn in enumerate(clean_batch(raws, self.rules)):
            if isinstance(txn, Rejected):
                rejections.append((position, txn))
            elif txn[key_field] is None:
                rejections.append((position, Rejected("clean", f"{key_field} is missing (it is the model key)",
                                                      txn["txn_id"])))
            else:
                cleaned.append(txn)
                cleaned_positions.append(position)
        encoded, feature_rejections = self.encoder.encode_batch(cleaned)
        rejections += [(cleaned_positions[i], rejected) for i, rejected in feature_rejections]
        rejections.sort(key=_first)
        dead_letters = [self.dead_letter(raws[position], rejected, source_of(position), now_ms)
                        for position, rejected in rejections]
        batch = RecordBatch.of_encoded(cleaned, encoded, key_field, None if source_watermarks is None
                                       else source_watermarks[np.array(cleaned_positions, np.int64)])
        model_keys = batch.model_keys
        shard_of_key = {key: shard_of(key, shards) for key in set(model_keys)}
        record_shards = np.fromiter((shard_of_key[key] for key in model_keys), np.int64, len(model_keys))
        used = np.unique(record_shards).tolist()
        if len(used) == 1:
            return {used[0]: batch}, dead_letters
        return {shard: batch.take(np.flatnonzero(record_shards == shard)) for shard in used}, dead_letters

    def dead_letter(self, raw: bytes, rejected: Rejected, source: dict[str, Any], now_ms: int) -> DeadLetter:
        """A dead letter as one JSON line, keyed by its txn_id. Bytes that are not UTF-8 appear as `\\xNN` escapes; a
        record over the size cap keeps its first `dead_letter_raw_bytes` bytes and a SHA-256 of all
        of them; account_id values are replaced by their pseudonyms."""
        letter: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        if len(raw) > self.rules.max_record_bytes:
            kept = raw[: self.dead_letter_raw_bytes]
            letter["raw_sha256"] = hashlib.sha256(raw).hexdigest()
            letter["raw_bytes"] = len(raw)
        else:
            kept = raw
        text = kept.decode("utf-8", errors="backslashreplace")
        letter.update(
            raw=redact_account_id(text, self.rules.pseudonym_key),
            stage=rejected.stage,
            reason=rejected.reason,
            source=source,
            txn_id=rejected.txn_id,
            received_at=now_ms,
        )
        return DeadLetter(orjson.dumps(letter).decode("utf-8"), rejected.txn_id, rejected.stage)


def compile_model_code() -> None:
    """Compiles the model's batch code, or loads it from numba's on-disk cache, for both forms a
    batch takes (read from bytes between operators, or built in place), so that the workers of a
    job find it cached. About 2 s the first time after the code changed, 0.1 s after that."""
    scorer = ModelScorer(("x",), (0,), Sgd(0.1), snapshot_every=1, top_reasons=1)
    batch = RecordBatch.of([ModelInput("k", "t", 0, 1, [0], [1.0], ScoreContext("fuel", "US", "web", 1.0, "USD", "a"))])
    for form in (batch, RecordBatch.from_bytes(batch.to_bytes())):
        scorer.score_columns(form, scorer.new_table(), 0)


def _first(pair: tuple) -> Any:
    return pair[0]


class Assessment(NamedTuple):
    """What a key's model made of one record: its probability of fraud before learning (0..1), the
    model's updates before learning, the top (feature index, contribution) pairs, and whether it learned."""

    probability: float
    updates: int
    reasons: list[tuple[int, float]]
    learned: bool


class AssessedBatch(NamedTuple):
    """What the models made of a batch, per record as arrays (see `Assessment`), the snapshots
    taken on the way, and the table rows whose models changed."""

    probability: np.ndarray  # float64, 0..1, before learning
    updates: np.ndarray  # int64, the model's updates before learning
    learned: np.ndarray  # bool
    reason_index: np.ndarray  # int32 (records, top_reasons): feature indices, largest |contribution| first
    reason_value: np.ndarray  # float64 (records, top_reasons): their contributions
    reason_count: np.ndarray  # int8: how many reasons of the row are set
    # float64, one per feature entry (the batch's indices): the values the model saw, standardized
    standardized: np.ndarray
    snapshots: list[KeyedLine]
    changed_rows: list[int]  # every row the batch used (the job writes them to state)


class ModelScorer:
    """Scores a record with its key's model, then learns from it when it has a label."""

    def __init__(self, feature_names: Sequence[str], standardized: Sequence[int], sgd: Sgd,
                 snapshot_every: int, top_reasons: int):
        self.feature_names = tuple(feature_names)
        self.standardized = tuple(standardized)
        self.sgd = sgd
        self.snapshot_every = snapshot_every
        self.top_reasons = top_reasons

    def new_model(self) -> KeyModel:
        return KeyModel(len(self.feature_names), self.standardized)

    def score_and_learn(self, key_model: KeyModel, record: ModelInput, now_ms: int) -> tuple[str, str | None]:
        """(score as a JSON line, snapshot as a JSON line or None); updates `key_model` in place.

        The score is the model's probability of fraud before it learns from this record;
        `model_updates` is how many updates the model had when it scored.
        """
        assessment = self.assess(key_model, record)
        score = self.score_line(record, assessment, now_ms)
        snapshot = None
        if assessment.learned:
            key_model.last_event_time = record.event_time
            if key_model.model.updates % self.snapshot_every == 0:
                snapshot = self.snapshot(key_model, record.model_key)
        return score, snapshot

    def assess(self, key_model: KeyModel, record: ModelInput) -> "Assessment":
        """Standardizes the record's features, scores it, and learns from it when it has a label."""
        indices = record.indices
        values = key_model.standardizer.transform(record.values)
        model = key_model.model
        p = model.predict_proba(indices, values)
        updates = model.updates
        reasons = model.top_contributions(indices, values, self.top_reasons)
        learned = record.label is not None and model.learn(indices, values, record.label, p, self.sgd)
        return Assessment(p, updates, reasons, learned)

    def score_line(self, record: ModelInput, assessment: "Assessment", now_ms: int) -> str:
        """The score of `record` as one JSON line (README, "Data contracts")."""
        return orjson.dumps({
            "schema_version": SCHEMA_VERSION,
            "txn_id": record.txn_id,
            "model_key": record.model_key,
            "score": assessment.probability,
            "label": record.label,
            "event_time": record.event_time,
            "model_updates": assessment.updates,
            "reasons": [{"feature": self.feature_names[i], "contribution": c} for i, c in assessment.reasons],
            "scored_at": now_ms,
            **record.context._asdict(),
        }).decode("utf-8")

    def score_batch(self, records: Sequence[ModelInput], models: dict[str, KeyModel],
                    load_model: Callable[[str], KeyModel | None], now_ms: int) -> tuple[list[str], list[KeyedLine]]:
        """Scores and learns from `records` one after another, in order, exactly as one record at
        a time would. `models` caches the models this batch uses: a key missing from it is loaded
        with `load_model` (None: a new model). Afterwards `models` holds every model the batch
        touched, for the caller to store. Returns (score JSON lines, snapshot JSON lines)."""
        scores = []
        snapshots = []
        for record in records:
            key_model = models.get(record.model_key)
            if key_model is None:
                key_model = load_model(record.model_key) or self.new_model()
                models[record.model_key] = key_model
            score, snapshot = self.score_and_learn(key_model, record, now_ms)
            scores.append(score)
            if snapshot is not None:
                snapshots.append(snapshot)
        return scores, snapshots

    def new_table(self) -> ModelTable:
        """An empty table of models for `score_columns`."""
        # Imported here, not with this module: numba takes 0.3 s to import, and only the
        # scoring side needs it (see also streaming/job/pyflink_internals.py).
        from udfs.compiled_model import ModelTable

        return ModelTable(len(self.feature_names), self.standardized)

    def score_columns(self, batch: RecordBatch, table: ModelTable, now_ms: int
                      ) -> tuple[list[bytes], list[KeyedLine], list[int]]:
        """`score_batch` in compiled code: scores and learns from the batch's records in order, as
        `score_and_learn` would one at a time, with the models of `table` (a key not in it gets a
        new model). Returns (score JSON lines as UTF-8, snapshot JSON lines, rows of the table
        the batch used). The job calls `assess_columns` and `score_lines` itself, as it also
        needs the probabilities (for its metrics and analytics)."""
        assessed = self.assess_columns(batch, table)
        return self.score_lines(batch, assessed, now_ms), assessed.snapshots, assessed.changed_rows

    def assess_columns(self, batch: RecordBatch, table: ModelTable) -> "AssessedBatch":
        """`assess` for every record of the batch in order (see `score_columns`), with snapshots."""
        from udfs.compiled_model import learn_batch

        n = len(batch)
        rows_of, add = table.rows, table.add
        rows = np.fromiter((rows_of[key] if key in rows_of else add(key) for key in batch.model_keys), np.int64, n)
        assessed = AssessedBatch(np.empty(n), np.empty(n, np.int64), np.empty(n, np.bool_),
                                 np.zeros((n, self.top_reasons), np.int32), np.zeros((n, self.top_reasons)),
                                 np.zeros(n, np.int8), np.empty(len(batch.values)), [], np.unique(rows).tolist())
        sgd = self.sgd
        position = 0
        while position < n:
            position = learn_batch(
                position, rows, batch.indptr, batch.indices, batch.values, batch.labels, batch.event_times,
                table.weights, table.bias, table.updates, table.rejected, table.last_event_time, table.count,
                table.mean, table.m2, table.positions, sgd.learning_rate, sgd.schedule != "constant", sgd.power_t,
                sgd.l2, self.snapshot_every, *assessed[:7])
            last = position - 1
            if assessed.learned[last] and table.updates[rows[last]] % self.snapshot_every == 0:
                assessed.snapshots.append(self.snapshot(table.key_model(int(rows[last])), batch.model_keys[last]))
        return assessed

    def score_lines(self, batch: RecordBatch, assessed: "AssessedBatch", now_ms: int) -> list[bytes]:
        """The batch's scores as JSON lines in UTF-8, as `score_line` writes them."""
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

    def snapshot(self, key_model: KeyModel, model_key: str) -> KeyedLine:
        """The key's model snapshot as one JSON line, keyed by the model key."""
        return KeyedLine(orjson.dumps(key_model.to_snapshot(model_key, self.feature_names)).decode("utf-8"), model_key)
