"""The core record types the steps of the job hand each other (pure Python, no Flink).

A cleaned transaction ready for its key's model is a `ModelInput` (one at a time) or a row of a
`RecordBatch` (udfs/wire.py, what the job runs); what the job writes is JSON lines,
some of which carry their Kafka message key (`KeyedLine`, `DeadLetter`).
"""

from __future__ import annotations

from typing import Any, NamedTuple


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
