"""The per-record steps of the scoring job, composed from `cleaning`, `features` and `model`.

`TransactionReader.read_envelope` runs before the stream is keyed: source envelope -> decode -> parse -> clean
-> features, giving a `ModelInput` record or a dead letter. `ModelScorer.score_and_learn` runs inside the
keyed operator on the key's `KeyModel`: standardize, score, learn, and emit the score and, every
`snapshot_every` updates, a snapshot. Neither touches Flink; the Flink wrappers only call them.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Any, Callable, NamedTuple, Sequence

import orjson

from udfs.cleaning import SCHEMA_VERSION, CleaningRules, Rejected, clean, decode, parse, redact_account_id
from udfs.features import FeatureEncoder
from udfs.model import KeyModel, Sgd


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


class ModelInput(NamedTuple):
    """A cleaned record ready for its key's model; (indices, values) is its sparse feature vector."""

    model_key: str
    txn_id: str
    event_time: int
    label: int | None
    indices: list[int]
    values: list[float]


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
        return ModelInput(txn[self.model_key_field], txn["txn_id"], txn["event_time"], txn["is_fraud"], indices, values)

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

    def dead_letter(self, raw: bytes, rejected: Rejected, source: dict[str, Any], now_ms: int) -> KeyedLine:
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
        return KeyedLine(orjson.dumps(letter).decode("utf-8"), rejected.txn_id)


class Assessment(NamedTuple):
    """What a key's model made of one record: its probability of fraud before learning (0..1), the
    model's updates before learning, the top (feature index, contribution) pairs, and whether it learned."""

    probability: float
    updates: int
    reasons: list[tuple[int, float]]
    learned: bool


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

    def snapshot(self, key_model: KeyModel, model_key: str) -> KeyedLine:
        """The key's model snapshot as one JSON line, keyed by the model key."""
        return KeyedLine(orjson.dumps(key_model.to_snapshot(model_key, self.feature_names)).decode("utf-8"), model_key)
