"""What becomes of a label that arrives after its transaction (pure Python, no Flink): the rule
that decides each label's outcome, whether an applied label is learned from now, waits for its
transaction's logged features or came too late, and the lines the job writes for it.

Each usable label ends in exactly one outcome (`label_outcome`):
  applied        the first label of a transaction the job scored, within the TTL: its model learns;
  duplicate      equal to the label already applied to that transaction;
  contradicting  different from the label already applied;
  expired        label_time - event_time > ttl, whatever came before;
  unknown        no transaction with that txn_id was scored within the wait for early labels.
Every outcome but `applied` is dead-lettered with stage `label` and its reason (`outcome_reason`),
as is a label that is `late` (`label_disposition`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from udfs.labels import Label

if TYPE_CHECKING:
    from udfs.wire import RoutedLabel

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
# Not an outcome either: an applied label whose transaction's features are not logged yet (its
# batch is still on its way: a label can overtake it) waits for them (`label_disposition`).
HOLD = "hold"

# The dead-letter stage of a label that is not applied.
LABEL_STAGE = "label"


def label_outcome(event_time: int, applied: int | None, label: Label, ttl_ms: int) -> str:
    """What becomes of `label` for a scored transaction of `event_time` (epoch ms) to which the
    label `applied` (0, 1, or None for none yet) was applied before: EXPIRED when label_time -
    event_time > ttl_ms; else APPLIED when none was; else DUPLICATE or CONTRADICTING."""
    if label.label_time - event_time > ttl_ms:
        return EXPIRED
    if applied is None:
        return APPLIED
    return DUPLICATE if label.is_fraud == applied else CONTRADICTING


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


def label_disposition(outcome: str, log_present: bool, watermark: int, expiry: int) -> str:
    """What the scoring operator does with a routed label of `outcome` (`routed_outcome`), given
    whether its transaction's feature log is at hand (`log_present`), the operator's current
    `watermark` and the event time at which that log expires (`expiry`, udfs.feature_log.expiry_of),
    both epoch ms: `outcome` itself unless it is APPLIED; APPLIED (learn now) when the log is
    present; HOLD (wait for the log: its batch is still on its way) while the watermark is before
    the log's expiry; LATE once it is not (the log was removed, or will never be kept)."""
    if outcome != APPLIED or log_present:
        return outcome
    return HOLD if watermark < expiry else LATE


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
