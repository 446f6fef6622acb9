"""A seeded generator of label streams for a generated transaction stream (pure Python, no Flink):
each transaction's own `is_fraud` as a label that comes later, with the labels that never come,
come twice or contradict, name unknown transactions, or cannot be read, in the shares asked for.
The label contract is udfs/labels.py."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping

from udfs.cleaning import Rejected, epoch_millis
from udfs.generator import check_ranges


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

    def __post_init__(self) -> None:
        # ValueError naming the field ("never_share: must be in [0, 1] (got 2)").
        check_ranges(self, (
            ("min_delay_ms", self.min_delay_ms > 0, "> 0"),
            ("max_delay_ms", self.max_delay_ms >= self.min_delay_ms, f">= min_delay_ms ({self.min_delay_ms})"),
            *((f"{name}_share", 0 <= getattr(self, f"{name}_share") <= 1, "in [0, 1]")
              for name in ("never", "duplicate", "contradicting", "unknown", "malformed", "iso_time"))))


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
