"""Labels that arrive after their transactions: the label contract and its cleaning (pure Python,
no Flink). What becomes of a label is decided in udfs/label_outcomes.py; a seeded generator of
label streams is udfs/label_generator.py; the lines the job sends LabelRouter.java are in
udfs/wire.py.

A label is one JSON object (README, "Data contracts"): `txn_id`, `is_fraud` (0 or 1), `label_time`
(epoch milliseconds, or ISO-8601 with a time zone) and optionally `source` (e.g. "chargeback",
"review"); other fields are ignored. A label that cannot be used is rejected at stage
`label-decode`, `label-parse` or `label-clean` (the stages of `udfs.cleaning`, named apart so that
dead letters and counters tell labels from transactions).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from udfs.cleaning import Rejected, _json_type, _txn_id, decode, epoch_millis, parse, shown

# The dead-letter stages of a label that cannot be read.
LABEL_READ_STAGES = {"decode": "label-decode", "parse": "label-parse", "clean": "label-clean"}

# A source longer than this is not a label source but something else pasted into the field.
MAX_SOURCE_CHARS = 64


class Label(NamedTuple):
    """A cleaned label: `txn_id` whitespace-normalized, `is_fraud` 0 or 1, `label_time` in epoch
    milliseconds, `source` (whitespace-normalized) or None."""

    txn_id: str
    is_fraud: int
    label_time: int
    source: str | None


def read_label(raw: bytes, max_record_bytes: int) -> Label:
    """The label in one raw record, or `Rejected` with stage label-decode (empty, over
    `max_record_bytes`, not UTF-8), label-parse (not a JSON object) or label-clean (a field
    missing or invalid), the reason naming the field, and the txn_id when it is usable."""
    try:
        return clean_label(parse(decode(raw, max_record_bytes)))
    except Rejected as rejected:
        rejected.stage = LABEL_READ_STAGES[rejected.stage]
        raise


def clean_label(record: Mapping[str, Any]) -> Label:
    """A `Label` from a parsed record, or `Rejected` at stage `clean` (see `read_label`)."""
    txn_id = _txn_id(record.get("txn_id"))
    try:
        if txn_id is None:
            value = record.get("txn_id")
            # An array or object shows its type only (see `shown`), a scalar its value too.
            detail = shown(value) if isinstance(value, (list, dict)) else f"{_json_type(value)} {shown(value)}"
            raise Rejected("clean", "txn_id is missing" if value is None else
                           f"txn_id must be a non-empty string, got {detail}")
        is_fraud = record.get("is_fraud")
        if isinstance(is_fraud, bool) or not isinstance(is_fraud, int) or is_fraud not in (0, 1):
            raise Rejected("clean", "is_fraud is missing" if is_fraud is None else
                           f"is_fraud must be 0 or 1, got {shown(is_fraud)}")
        label_time = record.get("label_time")
        if label_time is None:
            raise Rejected("clean", "label_time is missing")
        return Label(" ".join(txn_id.split()), is_fraud, epoch_millis("label_time", label_time),
                     _source(record.get("source")))
    except Rejected as rejected:
        rejected.txn_id = txn_id
        raise


def _source(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Rejected("clean", f"source must be a string, got {_json_type(value)}")
    text = " ".join(value.split())
    if len(text) > MAX_SOURCE_CHARS:
        raise Rejected("clean", f"source is {len(text)} characters, over {MAX_SOURCE_CHARS}")
    return text or None
