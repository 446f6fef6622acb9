"""Labels that arrive after their transactions (pure Python, no Flink): the label contract and its
cleaning, the rule that decides each label's outcome, and a seeded generator of label streams.

A label is one JSON object (README, "Data contracts"): `txn_id`, `is_fraud` (0 or 1), `label_time`
(epoch milliseconds, or ISO-8601 with a time zone) and optionally `source` (e.g. "chargeback",
"review"); other fields are ignored. A label that cannot be used is rejected at stage
`label-decode`, `label-parse` or `label-clean` (the stages of `udfs.cleaning`, named apart so that
dead letters and counters tell labels from transactions).

Each usable label ends in exactly one outcome (`label_outcome`):
  applied        the first label of a transaction the job scored, within the TTL: its model learns;
  duplicate      equal to the label already applied to that transaction;
  contradicting  different from the label already applied;
  expired        label_time - event_time > ttl, whatever came before;
  unknown        no transaction with that txn_id was scored within the wait for early labels.
Every outcome but `applied` is dead-lettered with stage `label` and its reason (`outcome_reason`).
"""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import numpy as np
import orjson

from udfs.cleaning import Rejected, _json_type, _txn_id, decode, epoch_millis, parse

APPLIED = "applied"
DUPLICATE = "duplicate"
CONTRADICTING = "contradicting"
EXPIRED = "expired"
UNKNOWN = "unknown"
# Not one of the rule's outcomes: a label that reached the job after its transaction's logged
# features were removed (the watermark had passed event_time + ttl): it came later than the label
# source's out-of-orderness allows.
LATE = "late"
OUTCOMES = (APPLIED, DUPLICATE, CONTRADICTING, EXPIRED, UNKNOWN, LATE)

# The dead-letter stage of a label that is not applied, and of one that cannot be read.
LABEL_STAGE = "label"
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
            raise Rejected("clean", "txn_id is missing" if value is None else
                           f"txn_id must be a non-empty string, got {_json_type(value)} {value!r:.40}")
        is_fraud = record.get("is_fraud")
        if isinstance(is_fraud, bool) or not isinstance(is_fraud, int) or is_fraud not in (0, 1):
            raise Rejected("clean", "is_fraud is missing" if is_fraud is None else
                           f"is_fraud must be 0 or 1, got {is_fraud!r:.40}")
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


def label_outcome(event_time: int, applied: int | None, label: Label, ttl_ms: int) -> str:
    """What becomes of `label` for a scored transaction of `event_time` (epoch ms) to which the
    label `applied` (0, 1, or None for none yet) was applied before: EXPIRED when label_time -
    event_time > ttl_ms; else APPLIED when none was; else DUPLICATE or CONTRADICTING."""
    if label.label_time - event_time > ttl_ms:
        return EXPIRED
    if applied is None:
        return APPLIED
    return DUPLICATE if label.is_fraud == applied else CONTRADICTING


def outcome_reason(outcome: str, label: Label, event_time: int | None, applied: int | None, ttl_ms: int,
                   unknown_wait_ms: int) -> str:
    """The one-line reason a label's dead letter gives for `outcome` (any but APPLIED)."""
    if outcome == DUPLICATE:
        return f"duplicate: is_fraud {label.is_fraud} was already applied to this transaction"
    if outcome == CONTRADICTING:
        return f"contradicting: is_fraud {label.is_fraud} after is_fraud {applied} was applied to this transaction"
    if outcome == EXPIRED:
        return (f"expired: label_time is {label.label_time - event_time} ms after the transaction's event_time, "
                f"over labels.ttl_ms {ttl_ms}")
    if outcome == UNKNOWN:
        return f"unknown: no transaction with this txn_id was scored within labels.unknown_wait_ms {unknown_wait_ms}"
    if outcome == LATE:
        return ("late: the label came after the watermark passed its transaction's event_time + labels.ttl_ms, "
                "when its features were no longer kept; raise event_time.labels.out_of_orderness_ms")
    raise ValueError(f"{outcome!r} has no dead letter; outcomes with one: {', '.join(OUTCOMES[1:])}")


@dataclass(frozen=True)
class LabelStreamSettings:
    """How `generate_labels` labels a transaction stream. Delays are event time, log-uniform in
    [min_delay_ms, max_delay_ms]; shares are of the labelled transactions, each in [0, 1]."""

    seed: int = 11
    min_delay_ms: int = 60_000  # one minute
    max_delay_ms: int = 14 * 86_400_000  # two weeks
    never_share: float = 0.05  # labelled transactions whose label never comes
    duplicate_share: float = 0.02  # labelled a second time, the same way, later
    contradicting_share: float = 0.01  # labelled a second time, the other way, later
    unknown_share: float = 0.01  # an extra label for a txn_id that no transaction has
    malformed_share: float = 0.0  # a label replaced by one the job cannot read
    iso_time_share: float = 0.1  # label times written as ISO-8601 strings


MALFORMED_LABEL_KINDS = ("truncated_json", "not_an_object", "missing_txn_id", "bad_is_fraud", "bad_label_time",
                         "empty_line")


def generate_labels(transactions: Iterable[bytes], settings: LabelStreamSettings) -> Iterator[bytes]:
    """The label stream of `transactions` (JSON lines, as `udfs.generator.generate` writes them),
    as JSON lines in label-time order (ties in the order they were made). The label of a
    transaction is its own `is_fraud`; a line that is not a transaction with a txn_id, an
    event_time and an is_fraud of 0 or 1 gets none. The same arguments give the same bytes."""
    rng = random.Random(settings.seed)
    labels: list[tuple[int, int, bytes]] = []  # (label_time, order made, line)
    for line in transactions:
        transaction = _labelled_transaction(line)
        if transaction is None:
            continue
        txn_id, event_time, is_fraud = transaction
        if rng.random() < settings.unknown_share:
            unknown_time = event_time + _delay(rng, settings)
            labels.append(_label_line(rng, settings, f"unknown-{settings.seed}-{len(labels)}", rng.randint(0, 1),
                                      unknown_time, len(labels)))
        if rng.random() < settings.never_share:
            continue
        first_time = event_time + _delay(rng, settings)
        labels.append(_label_line(rng, settings, txn_id, is_fraud, first_time, len(labels)))
        second = rng.random()
        if second < settings.duplicate_share + settings.contradicting_share:
            again = is_fraud if second < settings.duplicate_share else 1 - is_fraud
            labels.append(_label_line(rng, settings, txn_id, again, first_time + _delay(rng, settings), len(labels)))
    labels.sort()
    for _, _, line in labels:
        yield line


def _labelled_transaction(line: bytes) -> tuple[str, int, int] | None:
    """(txn_id, event_time ms, is_fraud) of a transaction line, or None when it has no such three."""
    try:
        record = json.loads(line)
        txn_id, is_fraud = record["txn_id"], record["is_fraud"]
        event_time = epoch_millis("event_time", record["event_time"])
    except (ValueError, TypeError, KeyError, Rejected):
        return None
    if not isinstance(txn_id, str) or not txn_id.strip() or is_fraud not in (0, 1) or isinstance(is_fraud, bool):
        return None
    return txn_id, event_time, is_fraud


def _delay(rng: random.Random, settings: LabelStreamSettings) -> int:
    low, high = math.log(settings.min_delay_ms), math.log(settings.max_delay_ms)
    return min(settings.max_delay_ms, max(settings.min_delay_ms, round(math.exp(rng.uniform(low, high)))))


def _label_line(rng: random.Random, settings: LabelStreamSettings, txn_id: str, is_fraud: int, label_time: int,
                order: int) -> tuple[int, int, bytes]:
    moment: int | str = label_time
    if rng.random() < settings.iso_time_share:
        moment = datetime.fromtimestamp(label_time / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    label = {"txn_id": txn_id, "is_fraud": is_fraud, "label_time": moment,
             "source": "chargeback" if is_fraud else "review"}
    if rng.random() < settings.malformed_share:
        return label_time, order, malformed_label(rng.choice(MALFORMED_LABEL_KINDS), label, rng)
    return label_time, order, _dumps(label)


def malformed_label(kind: str, label: dict[str, Any], rng: random.Random) -> bytes:
    """`label` broken in the way `kind` (one of MALFORMED_LABEL_KINDS) names, as one line of bytes."""
    broken = dict(label)
    if kind == "truncated_json":
        text = _dumps(label)
        return text[: rng.randint(5, len(text) - 5)]
    if kind == "not_an_object":
        return json.dumps([label["txn_id"], label["is_fraud"]]).encode("utf-8")
    if kind == "missing_txn_id":
        if rng.random() < 0.5:
            del broken["txn_id"]
        else:
            broken["txn_id"] = rng.choice(["", "  ", 12.5, None])
    elif kind == "bad_is_fraud":
        broken["is_fraud"] = rng.choice([2, -1, "yes", 0.5, True, None])
    elif kind == "bad_label_time":
        broken["label_time"] = rng.choice(["last week", "2026-01-01T10:00:00", -5, True])
    elif kind == "empty_line":
        return rng.choice([b"", b"  "])
    else:
        raise ValueError(f"unknown malformed label kind {kind!r}; allowed: {', '.join(MALFORMED_LABEL_KINDS)}")
    return _dumps(broken)


def _dumps(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------- what the job passes along
#
# In labels.mode stream or both the job joins labels to transactions by txn_id in Java
# (LabelRouter.java, keyed by txn_id) and sends each label to the scoring operator of its
# transaction's shard, which decides its outcome here and learns from the transaction's logged
# features. The lines between them are UTF-8, fields separated by tabs (txn_ids and sources are
# whitespace-normalized, so they hold no tab or newline).


def route_line(txn_id: str, shard: int, event_time: int, inline_label: int, where: str) -> bytes:
    """What LabelRouter learns of a transaction the job will score: its shard, event_time (ms),
    the inline label learned from when it is scored (-1: none) and `where` its features are logged
    (`FeatureLog` id and row: "<log id>:<row>")."""
    return f"{txn_id}\t{shard}\t{event_time}\t{inline_label}\t{where}".encode("utf-8")


def label_line(label: Label) -> bytes:
    """A cleaned label as LabelRouter reads it: txn_id, is_fraud, label_time, source ('' for none)."""
    return f"{label.txn_id}\t{label.is_fraud}\t{label.label_time}\t{label.source or ''}".encode("utf-8")


class RoutedLabel(NamedTuple):
    """A label as LabelRouter sends it to its transaction's shard.

    known: False when no transaction with its txn_id was routed within the wait (then event_time
    is -1 and where is ''). history: the labels of this transaction before this one, in the order
    they reached the router, as (is_fraud, label_time), the inline label first (at its event_time)
    when the transaction was learned from at scoring. where: the route's "<log id>:<row>"."""

    shard: int
    known: bool
    label: Label
    event_time: int
    history: tuple[tuple[int, int], ...]
    where: str


def read_routed_label(line: bytes) -> RoutedLabel:
    """The `RoutedLabel` in one of LabelRouter's lines:
    shard, 'label' | 'unknown', txn_id, event_time, is_fraud, label_time, source, history, where."""
    shard, kind, txn_id, event_time, is_fraud, label_time, source, history, where = line.decode("utf-8").split("\t")
    pairs = tuple(tuple(int(part) for part in pair.split(":")) for pair in history.split(",") if pair)
    return RoutedLabel(int(shard), kind == "label", Label(txn_id, int(is_fraud), int(label_time), source or None),
                       int(event_time), pairs, where)


def routed_label_line(routed: RoutedLabel) -> bytes:
    """`routed` as LabelRouter wrote it (the inverse of `read_routed_label`)."""
    label = routed.label
    history = ",".join(f"{is_fraud}:{label_time}" for is_fraud, label_time in routed.history)
    return (f"{routed.shard}\t{'label' if routed.known else 'unknown'}\t{label.txn_id}\t{routed.event_time}\t"
            f"{label.is_fraud}\t{label.label_time}\t{label.source or ''}\t{history}\t{routed.where}").encode("utf-8")


def routed_outcome(routed: RoutedLabel, ttl_ms: int) -> tuple[str, int | None]:
    """(outcome of the routed label, the label applied to its transaction before it or None):
    UNKNOWN when no transaction was found; otherwise `label_outcome` after the history's labels,
    each decided the same way in its turn (so the first in time that is not expired was applied)."""
    if not routed.known:
        return UNKNOWN, None
    applied = None
    for is_fraud, label_time in routed.history:
        if label_outcome(routed.event_time, applied, Label(routed.label.txn_id, is_fraud, label_time, None),
                         ttl_ms) == APPLIED:
            applied = is_fraud
    return label_outcome(routed.event_time, applied, routed.label, ttl_ms), applied


def where(log_id: str, row: int) -> str:
    """Where a record's features are logged, as a route carries it."""
    return f"{log_id}:{row}"


def log_position(where_: str) -> tuple[str, int]:
    """(log id, row) of `where`'s text."""
    log_id, _, row = where_.rpartition(":")
    return log_id, int(row)


def log_id_of(expires_at: int, records: int, worker: str, counter: int) -> str:
    """A feature log's id: unique (a worker's random token and its count of logs), starting with
    the event time (ms) at which the log expires and how many records it holds, so that ids alone
    tell what to remove when and how many records are kept."""
    return f"{expires_at}~{records}~{worker}~{counter}"


def expiry_of(log_id: str) -> tuple[int, int]:
    """(event time in ms at which the log `log_id` expires, its records) (see `log_id_of`)."""
    expires_at, records, _ = log_id.split("~", 2)
    return int(expires_at), int(records)


_LOG_HEADER = struct.Struct("<BII")  # version, records, entries
LOG_VERSION = 1


class FeatureLog(NamedTuple):
    """One scored shard batch's features as its models saw them, kept in keyed state until the
    batch's labels come or its time-to-live passes: record r has model key model_keys[r], event
    time event_times[r] (ms), score scores[r] (0..1) and standardized entries
    indices/values[indptr[r]:indptr[r+1]]. As bytes (`to_bytes`), a record costs 24 bytes, 12 per
    feature entry and its model key's UTF-8 bytes plus one."""

    model_keys: list[str]
    event_times: np.ndarray  # int64
    scores: np.ndarray  # float64
    indptr: np.ndarray  # int64
    indices: np.ndarray  # int32
    values: np.ndarray  # float64

    def to_bytes(self) -> bytes:
        keys = "\n".join(self.model_keys).encode("utf-8", "surrogatepass")
        return b"".join((_LOG_HEADER.pack(LOG_VERSION, len(self.model_keys), len(self.indices)),
                         self.event_times.astype(np.int64).tobytes(), self.scores.astype(np.float64).tobytes(),
                         self.indptr.astype(np.int64).tobytes(), self.indices.astype(np.int32).tobytes(),
                         self.values.astype(np.float64).tobytes(), keys))

    @classmethod
    def from_bytes(cls, data: bytes) -> "FeatureLog":
        version, n, entries = _LOG_HEADER.unpack_from(data)
        if version != LOG_VERSION:
            raise ValueError(f"feature log version {version} is not supported (this release reads {LOG_VERSION})")
        offset = _LOG_HEADER.size
        arrays = []
        for dtype, count in ((np.int64, n), (np.float64, n), (np.int64, n + 1), (np.int32, entries),
                             (np.float64, entries)):
            array = np.frombuffer(data, dtype, count, offset)
            offset += array.nbytes
            arrays.append(array)
        keys = data[offset:].decode("utf-8", "surrogatepass").split("\n") if n else []
        return cls(keys, *arrays)

    def entries(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature indices, standardized values) of record `row`."""
        begin, end = self.indptr[row], self.indptr[row + 1]
        return self.indices[begin:end], self.values[begin:end]


def learning_line(txn_id: str, model_key: str, label: Label, event_time: int, model_updates: int,
                  update_rejected: bool) -> bytes:
    """The learning output's line for an applied label (README, "Data contracts"): what the key's
    model learned from, with its update count after the step."""
    return orjson.dumps({"schema_version": 1, "txn_id": txn_id, "model_key": model_key, "label": label.is_fraud,
                         "label_time": label.label_time, "event_time": event_time,
                         "delay_ms": label.label_time - event_time, "source": label.source,
                         "model_updates": model_updates, "update_rejected": update_rejected})


def label_dead_letter(label: Label, outcome: str, reason: str, now_ms: int) -> bytes:
    """The dead letter of a label that was not applied (stage `label`): the label itself as raw,
    its outcome and the one-line reason."""
    raw = orjson.dumps({"txn_id": label.txn_id, "is_fraud": label.is_fraud, "label_time": label.label_time,
                        "source": label.source}).decode("utf-8")
    return orjson.dumps({"schema_version": 1, "raw": raw, "stage": LABEL_STAGE, "outcome": outcome, "reason": reason,
                         "source": None, "txn_id": label.txn_id, "received_at": now_ms})
