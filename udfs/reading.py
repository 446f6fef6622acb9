"""Reading transactions (pure Python, no Flink): a bundle of source envelopes becomes, per shard,
the cleaned records ready for their keys' models as one `RecordBatch`, and the dead letters.

`TransactionReader.read_bundle_columns` is what the job runs (ReadBundle in streaming/job/), over
a whole bundle at once (udfs/batch_cleaning.py, FeatureEncoder.encode_batch); `read` and
`read_envelope` read one record the same way, from udfs/cleaning.py's per-record functions: the
unit tests hold the two paths to the same results (tests/reference/pipeline.py).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any, Callable, Sequence

import numpy as np
import orjson

from udfs.batch_cleaning import clean_batch
from udfs.cleaning import CleaningRules, Rejected, clean, decode, parse, redact_account_id, redact_account_id_bytes
from udfs.features import FeatureEncoder
from udfs.records import DeadLetter, KeyedLine, ModelInput, ScoreContext
from udfs.wire import RecordBatch, envelope_payload, source_tag, split_envelope, split_watermark_tag

# The dead letters' contract version (docs/contracts.md): 2 keeps the redacted bytes exactly
# (`raw_base64`); 1 had only the `raw` text.
DEAD_LETTER_VERSION = 2


def shard_of(model_key: str, shards: int) -> int:
    """The shard (0..shards-1) of a model key: crc32, so it is the same in every process and run.
    The scoring operators' state is keyed by shard, so a savepoint's models are found again only
    while this stays the same."""
    return zlib.crc32(model_key.encode("utf-8")) % shards


class TransactionReader:
    """Decode, parse, clean and encode records: a bundle at a time (`read_bundle_columns`) or one
    at a time (`read`)."""

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

    def read_bundle_columns(self, bundle: str, shards: int, now_ms: int, watermarked: bool = False
                            ) -> tuple[dict[int, RecordBatch], list[DeadLetter]]:
        """Reads every record of a bundle (envelopes joined by newlines, in arrival order): returns
        each shard's records (by `shard_of` their model key) as one `RecordBatch` in arrival order,
        and the dead letters as JSON lines in arrival order, as `read_envelope` would one at a time.
        `watermarked`: each envelope starts with its split's watermark (see `split_watermark_tag`),
        which the batches carry."""
        envelopes = bundle.split("\n")
        watermarks = None
        if watermarked:
            tagged = [split_watermark_tag(envelope) for envelope in envelopes]
            watermarks = np.fromiter((watermark for watermark, _ in tagged), np.int64, len(tagged))
            envelopes = [envelope for _, envelope in tagged]
        return self.read_columns([envelope_payload(envelope) for envelope in envelopes],
                                 lambda position: split_envelope(envelopes[position])[0], shards, now_ms, watermarks,
                                 [source_tag(envelope) for envelope in envelopes])

    def read_columns(self, raws: Sequence[bytes], source_of: Callable[[int], dict[str, Any]], shards: int,
                     now_ms: int, source_watermarks: np.ndarray | None = None,
                     source_tags: Sequence[str] | None = None) -> tuple[dict[int, RecordBatch], list[DeadLetter]]:
        """Reads records' bytes as `read` does one at a time, but over the whole batch at once
        (`clean_batch`, `FeatureEncoder.encode_batch`): returns each shard's records as one
        `RecordBatch` in arrival order, and the dead letters in arrival order; `source_of(i)` gives
        the source coordinates of record i, asked only for dead letters; `source_watermarks[i]` is
        record i's source watermark (none: NO_WATERMARK), `source_tags[i]` its source tag (none: "")."""
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
                                       else source_watermarks[np.array(cleaned_positions, np.int64)],
                                       None if source_tags is None else [source_tags[i] for i in cleaned_positions])
        model_keys = batch.model_keys
        shard_of_key = {key: shard_of(key, shards) for key in set(model_keys)}
        record_shards = np.fromiter((shard_of_key[key] for key in model_keys), np.int64, len(model_keys))
        used = np.unique(record_shards).tolist()
        if len(used) == 1:
            return {used[0]: batch}, dead_letters
        return {shard: batch.take(np.flatnonzero(record_shards == shard)) for shard in used}, dead_letters

    def dead_letter(self, raw: bytes, rejected: Rejected, source: dict[str, Any], now_ms: int) -> DeadLetter:
        """A dead letter (contract version 2, docs/contracts.md) as one JSON line, keyed by its txn_id.

        `raw_base64` holds the record's bytes exactly, base64, each account_id value replaced by its
        pseudonym token (`redact_account_id_bytes`): what `riskstream replay` sends again. A record
        over the size cap keeps only its first `dead_letter_raw_bytes` bytes there, with
        `truncated` true and its size and the SHA-256 of all its bytes. `raw` is a preview for
        people: the first `dead_letter_raw_bytes` bytes as text, bytes that are not UTF-8 as
        `\\xNN`, account_id values as plain pseudonyms (`redact_account_id`)."""
        key = self.rules.pseudonym_key
        preview = raw[: self.dead_letter_raw_bytes]
        truncated = len(raw) > self.rules.max_record_bytes
        letter: dict[str, Any] = {
            "schema_version": DEAD_LETTER_VERSION,
            "raw": redact_account_id(preview.decode("utf-8", errors="backslashreplace"), key),
            "raw_base64": base64.b64encode(redact_account_id_bytes(preview if truncated else raw, key)).decode("ascii"),
            "account_ids_pseudonymized": True,
            "truncated": truncated,
        }
        if truncated:
            letter["raw_sha256"] = hashlib.sha256(raw).hexdigest()
            letter["raw_bytes"] = len(raw)
        letter.update(stage=rejected.stage, reason=rejected.reason, source=source, txn_id=rejected.txn_id,
                      received_at=now_ms)
        return DeadLetter(orjson.dumps(letter).decode("utf-8"), rejected.txn_id, rejected.stage)


def _first(pair: tuple) -> Any:
    return pair[0]
